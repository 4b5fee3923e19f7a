"""Advantage Weighted Matching (AWM; Xue et al. 2025, released as scxue/advantage_weighted_matching): the
flow-matching loss on a rollout's re-noised leaves, weighted by each leaf's advantage, with a KL to the
base policy and one to a slowly moving EMA of the weights."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from grpo.core.objective import Keep, Lag, LossContext, Metric, UnitContext, UnitLoss
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout

from .forward import NoisedLeaves, noised_leaves, per_sample_mean, renoise

TimeType = Literal["discrete", "discrete_with_init", "discrete_wo_init", "uniform", "logit_normal"]
Weighting = Literal["ghuber", "huber", "uniform", "t", "t2"]
KLWeight = Literal["uniform", "elbo"]


def stratified_indices(lo: int, hi: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n grid indices, one in each of n strata of [lo, hi): the strata bounds truncated from
    ``linspace(lo, hi, n + 1)``, an index drawn uniformly within each (AWM's ``discrete`` draw)."""
    bounds = torch.linspace(lo, hi, n + 1).long()
    u = torch.rand(n, generator=g)
    return bounds[:-1] + (u * (bounds[1:] - bounds[:-1])).long()


def shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1.0 + (shift - 1.0) * t)


def awm_levels(time_type: TimeType, count: int, fraction: float, shift: float):
    """The draw of one leaf's `count` noise levels, as AWM's ``time_type`` draws a micro-batch's:
    ``discrete`` takes one rollout level in each of `count` strata of the first ⌊T·fraction⌋ levels
    (``discrete_wo_init`` of levels 1 … ⌊T·fraction⌋; ``discrete_with_init`` level 0 and the rest from
    there), ``uniform`` stratified values of [0.2, 1] in a random order, ``logit_normal`` stratified
    quantiles of the standard normal in a random order through a sigmoid (at least 0.01); the
    continuous two shifted by ``shift·t/(1 + (shift − 1)·t)``."""

    def draw(grid: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        top = int(int(grid.shape[0]) * fraction)
        if time_type == "discrete":
            return grid[stratified_indices(0, top, count, g)]
        if time_type == "discrete_wo_init":
            return grid[stratified_indices(1, top, count, g)]
        if time_type == "discrete_with_init":
            rest = stratified_indices(1, top, count - 1, g) if count > 1 else torch.zeros(0, dtype=torch.long)
            return grid[torch.cat([torch.zeros(1, dtype=torch.long), rest])]
        base = (torch.arange(count) + torch.rand(count, generator=g)) / count
        if time_type == "uniform":
            t = 0.2 + base * 0.8
            return shifted(t[torch.rand(count, generator=g).argsort()], shift)
        normal = torch.distributions.Normal(0.0, 1.0)
        u = normal.icdf(base)[torch.randperm(count, generator=g)]
        return shifted(torch.sigmoid(u), shift).clamp(min=0.01)

    return draw


class AWM:
    """Advantage Weighted Matching (Xue et al. 2025, released as scxue/advantage_weighted_matching). Each
    leaf is noised again at ``train_timesteps`` levels, x_t = (1 − t)·x0 + t·ε, and the velocity's error
    m = mean((v_θ − (ε − x0))²) (fp64) becomes a log-likelihood surrogate, by default the release's
    generalised Huber ℓ = −((m + 10⁻¹⁰)^p − 10⁻¹⁰ᵖ)·t/p. With A' = clip(A, ±C)/C·A_max and the ratio
    ρ = exp(ℓ − sg(ℓ_old)) the unit's loss is ``max(−A'ρ, −A'·clip(ρ, 1 ± ε)) + β·mean((v_θ − v_ref)²)
    + β_ema·mean((v_θ − v_ema)²)``. On-policy (released) ℓ_old is ℓ itself, so ρ = 1 and the
    gradient is −A'·∇ℓ; off-policy the rollout and ℓ_old come from the EMA. The EMA starts as the
    weights and follows them after every iteration as ``ema ← d·ema + (1 − d)·θ`` with
    d = min(rate·s, max) at optimizer step s (released: 0.001 and 0.3)."""

    unit = "noised_leaves"
    keep = Keep()  # the leaves only
    metrics = {
        "loss": Metric("loss"),
        "policy_loss": Metric("policy_loss"),
        "matching_error": Metric("matching_error"),
        "ratio_max": Metric("ratio", "max", 1.0),
        "clip_fraction": Metric("clipped"),
        "kl": Metric("kl"),
        "ema_kl": Metric("ema_kl"),
    }

    def __init__(
        self,
        *,
        train_timesteps: Annotated[int, Range(ge=1), Doc(
            "noise levels each leaf is trained at, each with fresh noise (released: 6)")] = 6,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Doc(
            "the discrete draws pick among the first ⌊T·fraction⌋ of the rollout's T levels (released: 0.9)")] = 0.9,
        time_type: Annotated[TimeType, Doc(
            "how the levels are drawn: a rollout level in each stratum of the first ⌊T·fraction⌋ (released "
            "'discrete'), the same from level 1 or with level 0 always, or continuous t: stratified 'uniform' on "
            "[0.2, 1] or 'logit_normal', each shifted by time_shift")] = "discrete",
        time_shift: Annotated[float, Range(gt=0), Doc(
            "shift of the continuous draws, shift·t/(1 + (shift − 1)·t) (released: 3.0)")] = 3.0,
        weighting: Annotated[Weighting, Doc(
            "the surrogate ℓ of the error m at level t: 'ghuber' −((m + 1e-10)^p − 1e-10^p)·t/p (released), "
            "'huber' −(√(m + 1e-10) − 1e-5)·t, 'uniform' −m, 't' −m·t, 't2' −m·t²")] = "ghuber",
        ghuber_power: Annotated[float, Range(gt=0), Doc("p of the 'ghuber' weighting (released: 0.25)")] = 0.25,
        adv_clip: Annotated[float, Range(gt=0), Doc("C: advantages clipped to ±C ...")] = 5.0,
        advantage_max: Annotated[float, Range(gt=0), Doc(
            "... then scaled by advantage_max/C (released: 1; C keeps them as clipped)")] = 1.0,
        clip_range: Annotated[float, Range(gt=0), Doc(
            "ε of the ratio's clip (released: 1; the on-policy ratio is 1 whatever ε)")] = 1.0,
        kl_beta: Annotated[float, Range(ge=0), Doc(
            "β: weight of the velocity's squared distance to the base policy (released: 1e-4)")] = 1e-4,
        kl_weight: Annotated[KLWeight, Doc(
            "'uniform' (released) or 'elbo': the distance divided by 2s², s = 0.7·√(t/(1 − min(t, 0.99)))")
        ] = "uniform",
        ema_beta: Annotated[float, Range(ge=0), Doc(
            "β_ema: weight of the velocity's squared distance to the EMA (released: 1; 0 keeps no EMA "
            "unless off_policy)")] = 1.0,
        ema_kl_weight: Annotated[KLWeight, Doc("the same choice for the distance to the EMA")] = "uniform",
        ema_decay_rate: Annotated[float, Range(ge=0), Doc(
            "the EMA's decay grows by this per optimizer step (released kl_ema_decay_type 'linear': 0.001; "
            "'constant' is a rate of at least the max) ...")] = 0.001,
        ema_decay_max: Annotated[float, Range(ge=0, lt=1), Doc("... up to this (released: 0.3)")] = 0.3,
        off_policy: Annotated[bool, Doc(
            "roll out with the EMA and take ℓ_old from it (released: false, on-policy)")] = False,
    ) -> None:
        self.count, self.fraction, self.time_type, self.time_shift = train_timesteps, timestep_fraction, time_type, time_shift
        self.weighting, self.power = weighting, ghuber_power
        self.adv_clip, self.advantage_max, self.clip_range = adv_clip, advantage_max, clip_range
        self.kl_beta, self.kl_weight, self.ema_beta, self.ema_kl_weight = kl_beta, kl_weight, ema_beta, ema_kl_weight
        self.ema_decay_rate, self.ema_decay_max, self.off_policy = ema_decay_rate, ema_decay_max, off_policy

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0

    @property
    def lag(self) -> Lag | None:
        if self.ema_beta == 0 and not self.off_policy:
            return None
        return Lag(rate=self.ema_decay_rate, cap=self.ema_decay_max, every="iteration", rollout=self.off_policy)

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> NoisedLeaves:
        draw = awm_levels(self.time_type, self.count, self.fraction, self.time_shift)
        return noised_leaves(rollout, advantages, ctx, self.fraction, draw)

    def log_likelihood(self, error: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ℓ of per-unit errors m (fp64) at levels t (the release's ``weighting``)."""
        t = t.to(error.dtype)
        if self.weighting == "ghuber":
            p = self.power
            return -((error + 1e-10) ** p - math.pow(1e-10, p)) * t / p
        if self.weighting == "huber":
            return -(torch.sqrt(error + 1e-10) - 1e-5) * t
        return -error * {"uniform": torch.ones_like(t), "t": t, "t2": t**2}[self.weighting]

    def distance(self, v: torch.Tensor, other: torch.Tensor, t: torch.Tensor, weight: KLWeight) -> torch.Tensor:
        d = per_sample_mean((v - other) ** 2)
        if weight == "elbo":
            s = torch.sqrt(t / (1.0 - t.clamp(0.0, 0.99))) * 0.7
            d = d / (2.0 * s.to(d.dtype) ** 2)
        return d

    def advantage(self, advantage: torch.Tensor) -> torch.Tensor:
        return advantage.clamp(-self.adv_clip, self.adv_clip) / self.adv_clip * self.advantage_max

    def loss(self, units: NoisedLeaves, ctx: LossContext) -> UnitLoss:
        x0, noise, xt, t = renoise(units, ctx)
        sigma, cond = units.sigma.to(x0.device), ctx.cond.select(units.tree)
        target = (noise - x0).double()
        with torch.no_grad():
            v_ema = None
            if self.ema_beta > 0 or self.off_policy:
                with ctx.lagged():  # before the forward with gradients: the EMA is swapped in place
                    v_ema = ctx.policy.velocity(xt, sigma, cond).double()
            if self.kl_beta > 0:
                with ctx.policy.reference():
                    v_ref = ctx.policy.velocity(xt, sigma, cond).double()
        v = ctx.policy.velocity(xt, sigma, cond).double()
        error = per_sample_mean((v - target) ** 2)
        ell = self.log_likelihood(error, sigma)
        if self.off_policy:
            ell_old = self.log_likelihood(per_sample_mean((v_ema - target) ** 2), sigma)
        else:
            ell_old = ell.detach()
        advantage = units.advantage.to(x0.device)
        finite = torch.isfinite(advantage)
        a = self.advantage(torch.where(finite, advantage, torch.zeros_like(advantage))).double()
        ratio = torch.exp(ell - ell_old)
        policy = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - self.clip_range, 1.0 + self.clip_range))
        values = {"policy_loss": policy.detach().float(), "matching_error": error.detach().float(),
                  "ratio": ratio.detach().float(), "clipped": ((ratio.detach() - 1.0).abs() > self.clip_range).float()}
        loss = policy
        if self.kl_beta > 0:
            kl = self.distance(v, v_ref, sigma, self.kl_weight)
            loss = loss + self.kl_beta * kl
            values["kl"] = kl.detach().float()
        if self.ema_beta > 0:
            ema_kl = self.distance(v, v_ema, sigma, self.ema_kl_weight)
            loss = loss + self.ema_beta * ema_kl
            values["ema_kl"] = ema_kl.detach().float()
        return UnitLoss(loss.float(), finite, values)
