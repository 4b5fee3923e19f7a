"""Direct Group Preference Optimization (DGPO; Luo et al. 2026, released as Luo-Yihong/DGPO): a group-level
preference on the forward process. A unit is a whole group (a tree's leaves) noised again at one level
with one noise draw shared by the group, because the preference weight couples the group's members."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from grpo.core.objective import Keep, Lag, LossContext, Metric, UnitContext, UnitLoss, Units
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout

from .forward import SEED_RANGE, noised, per_sample_mean


@dataclass(kw_only=True)
class NoisedGroups(Units):
    """Units of a group-level objective on the forward process.

    Attributes:
        leaves: (U, G) long: the group's leaves (indices in ``Rollout.final``).
        sigma: (U,) fp32: the level t at which the whole group is noised again.
        seed: (U, G) long: each member's noise seed (one value along a row when the noise is shared).
        advantage: (U, G) fp32: the members' advantages (NaN for a leaf without a score).

    ``major`` is the unit's index among its tree's levels, ``minor`` 0, and ``chain`` the tree's
    first leaf, so that with ``train.accumulation_unit = "chains"`` a group's levels share a step.
    """

    leaves: torch.Tensor
    sigma: torch.Tensor
    seed: torch.Tensor
    advantage: torch.Tensor

    def valid(self) -> torch.Tensor:
        return torch.isfinite(self.advantage).any(dim=1)


def noised_groups(rollout: Rollout, advantages: Advantages, ctx: UnitContext, count: int, last: int,
                  shared_noise: bool) -> NoisedGroups:
    """Each tree at `count` distinct levels among the rollout's levels 0 … `last` (a random choice per
    tree from its generator), with one noise seed per unit shared by its members or one per member."""
    levels = rollout.sigmas[:-1].float()
    pool = min(last + 1, int(levels.shape[0]))
    k, per_tree, trees = min(count, pool), rollout.plan.leaves, len(ctx.generators)
    picks, seeds = [], []
    for g in ctx.generators:
        picks.append(torch.randperm(pool, generator=g)[:k])
        if shared_noise:
            seeds.append(torch.randint(SEED_RANGE, (k, 1), generator=g).expand(k, per_tree))
        else:
            seeds.append(torch.randint(SEED_RANGE, (k, per_tree), generator=g))
    tree = torch.arange(trees).repeat_interleave(k)
    first = tree * per_tree
    adv = advantages.values[-1].float().clone()
    if ctx.scored is not None:
        adv[~ctx.scored] = float("nan")
    leaves = first.view(-1, 1) + torch.arange(per_tree).view(1, -1)
    owner = rollout.tree[-1].long()
    return NoisedGroups(
        tree=owner[first] if trees else tree, major=torch.arange(k).repeat(trees), minor=torch.zeros_like(tree),
        chain=first, leaves=leaves, advantage=adv[leaves],
        sigma=levels[torch.cat(picks)] if picks else torch.zeros(0),
        seed=torch.cat(seeds) if seeds else torch.zeros(0, per_tree, dtype=torch.long))


class DGPO:
    """Direct Group Preference Optimization (released as Luo-Yihong/DGPO, config/dgpo_wocfg_emaref.py). A
    group is noised at level t with shared noise ε; each member's denoising error d_i = mean((ε − x0 − v_θ)²)
    and the reference's d_i^ref give the group's weight w = σ(β_dpo/G · Σ_i A_i·sg(d_i − d_i^ref)), and
    the unit's loss ``mean_i(w·A_i·d_i) + β·mean_i((v_θ − v_base)²)`` with A clipped to ±C. The
    reference is an EMA of the weights (``use_ema_ref``, blended after every optimizer step with
    d = min(rate·s, max) at step s; released 0.001 and 0.3) or the base policy. A PPO-style clip drops
    the gradient of d_i where ρ = exp(d_i^ema − d_i) has left 1 ± ε in the direction of A_i (``clip_dsm``;
    ``clip_kl`` does so for the KL term). After ``switch_ema_ref`` optimizer steps the EMA makes the
    rollout."""

    unit = "noised_groups"
    keep = Keep()  # the leaves only
    metrics = {
        "loss": Metric("loss"),
        "policy_loss": Metric("policy_loss"),
        "matching_error": Metric("matching_error"),
        "group_weight": Metric("weight"),
        "reference_gap": Metric("gap"),
        "clip_fraction": Metric("clipped"),
        "kl": Metric("kl"),
    }

    def __init__(
        self,
        *,
        beta_dpo: Annotated[float, Range(gt=0), Doc(
            "β_dpo: sharpness of the group's sigmoid weight (released: 2000 with the EMA reference, 100 with the "
            "base one)")] = 2000.0,
        train_timesteps: Annotated[int, Range(ge=1), Doc(
            "levels each group is trained at, distinct, among the rollout's levels 0 … trunc_steps (released: 4)")
        ] = 4,
        trunc_steps: Annotated[int, Range(ge=0), Doc(
            "the last rollout level trained (released: 6 of 10 steps, 4 for GenEval)")] = 6,
        shared_noise: Annotated[bool, Doc(
            "one noise draw for the whole group at a level (released) or one per member")] = True,
        adv_clip: Annotated[float, Range(gt=0), Doc("advantages clipped to ±adv_clip")] = 5.0,
        kl_beta: Annotated[float, Range(ge=0), Doc(
            "β: weight of the velocity's squared distance to the base policy (released: 1e-3)")] = 1e-3,
        use_ema_ref: Annotated[bool, Doc(
            "the preference's reference: the EMA of the weights (released, 'Mode 2b') or the base policy")] = True,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the PPO-style clip (released: 1e-5)")] = 1e-5,
        clip_dsm: Annotated[bool, Doc("drop the clipped members' denoising-error gradient (released: true)")] = True,
        clip_kl: Annotated[bool, Doc("drop the clipped members' KL gradient (released: false)")] = False,
        ema_decay_rate: Annotated[float, Range(ge=0), Doc(
            "the EMA's decay grows by this per optimizer step ...")] = 0.001,
        ema_decay_max: Annotated[float, Range(ge=0, lt=1), Doc("... up to this (released: 0.3)")] = 0.3,
        switch_ema_ref: Annotated[int, Range(ge=-1), Doc(
            "the EMA makes the rollout once more optimizer steps than this have been taken (released: 200; "
            "-1: from the start)")] = 200,
    ) -> None:
        self.beta_dpo, self.count, self.last, self.shared_noise = beta_dpo, train_timesteps, trunc_steps, shared_noise
        self.adv_clip, self.kl_beta, self.use_ema_ref = adv_clip, kl_beta, use_ema_ref
        self.clip_range, self.clip_dsm, self.clip_kl = clip_range, clip_dsm, clip_kl
        self.ema_decay_rate, self.ema_decay_max, self.switch = ema_decay_rate, ema_decay_max, switch_ema_ref

    @property
    def uses_ema(self) -> bool:
        return self.use_ema_ref or self.clip_dsm or self.clip_kl

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0 or not self.use_ema_ref

    @property
    def lag(self) -> Lag:
        # released: d = min(max, rate·s) with s the steps taken *before* this one, hence flat = 1
        return Lag(rate=self.ema_decay_rate, cap=self.ema_decay_max, flat=1, every="optimizer_step",
                   rollout=True, rollout_after=self.switch + 1)

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> NoisedGroups:
        return noised_groups(rollout, advantages, ctx, self.count, self.last, self.shared_noise)

    def loss(self, units: NoisedGroups, ctx: LossContext) -> UnitLoss:
        n, size = units.leaves.shape
        x0, noise, xt, _ = noised(ctx.rollout.final, units.leaves.reshape(-1), units.seed.reshape(-1),
                                  units.sigma.repeat_interleave(size))
        sigma, target = units.sigma.to(x0.device).repeat_interleave(size), noise - x0
        cond = ctx.cond.select(units.tree.repeat_interleave(size))
        with torch.no_grad():
            v_ema = v_base = None
            if self.uses_ema:
                with ctx.lagged():  # before the forward with gradients: the EMA is swapped in place
                    v_ema = ctx.policy.velocity(xt, sigma, cond).float()
            if self.needs_reference:
                with ctx.policy.reference():
                    v_base = ctx.policy.velocity(xt, sigma, cond).float()
        v = ctx.policy.velocity(xt, sigma, cond).float()
        raw = units.advantage.to(x0.device).reshape(-1)
        present = torch.isfinite(raw)
        a = torch.where(present, raw, torch.zeros_like(raw)).clamp(-self.adv_clip, self.adv_clip)
        error = per_sample_mean((target - v) ** 2)
        clipped = torch.zeros_like(present)
        if self.uses_ema:
            ratio = torch.exp(per_sample_mean((target - v_ema) ** 2) - error.detach())
            clipped = torch.where(a > 0, ratio > 1.0 + self.clip_range, ratio < 1.0 - self.clip_range)
        trained = torch.where(clipped, error.detach(), error) if self.clip_dsm else error
        reference = v_ema if self.use_ema_ref else v_base
        gap = error.detach() - per_sample_mean((target - reference) ** 2)
        weight = torch.sigmoid((a * self.beta_dpo * gap / size).view(n, size).sum(dim=1))
        policy = (weight.view(n, 1) * (a * trained).view(n, size)).mean(dim=1)
        values = {"policy_loss": policy.detach(), "matching_error": error.detach().view(n, size).mean(dim=1),
                  "weight": weight.detach(), "gap": gap.view(n, size).mean(dim=1),
                  "clipped": clipped.float().view(n, size).mean(dim=1)}
        loss = policy
        if self.kl_beta > 0:
            kl = per_sample_mean((v - v_base) ** 2)
            if self.clip_kl:
                kl = torch.where(clipped, kl.detach(), kl)
            kl = kl.view(n, size).mean(dim=1)
            loss = loss + self.kl_beta * kl
            values["kl"] = kl.detach()
        return UnitLoss(loss.float(), present.view(n, size).any(dim=1), values)
