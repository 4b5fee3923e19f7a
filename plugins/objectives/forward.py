"""Objectives on the forward process: a rollout's clean leaves are noised again, x_t = (1 − t)·x0 + t·ε,
and the velocity the policy predicts there is trained toward the better leaves. They read no per-step
density, so the rollout may be deterministic (any registered solver) and keeps only its leaves.

The units are (leaf, noise level, noise draw) triples, `NoisedLeaves`: each leaf is trained at
⌊T·fraction⌋ of the rollout's T noise levels (σ_0 = 1 … σ_{T−1}, drawn without repeats in a random
order per leaf, as DiffusionNFT's release draws its timesteps), each with fresh noise from a seed of
its own, so that a unit's noise is the same in whichever micro-batch, rank or resumed run it is
computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from grpo.core.objective import Keep, Lag, LossContext, Metric, UnitContext, UnitLoss, Units
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout

SEED_RANGE = 2**62

LevelDraw = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

Fraction = Annotated[float, Range(gt=0, le=1), Doc(
    "share of the rollout's T noise levels each leaf is trained at: ⌊T·fraction⌋ of them (at least one), "
    "without repeats (DiffusionNFT: 0.99, 9 of 10)")]


@dataclass(kw_only=True)
class NoisedLeaves(Units):
    """Units of an objective on the forward process.

    Attributes (all (U,)):
        leaf: the leaf's index in ``Rollout.final`` (long).
        sigma: the noise level t at which the leaf is noised again (fp32).
        seed: the seed of the unit's noise draw ε (long).
        advantage: the leaf's advantage (fp32; NaN for a leaf without a score, left out).
    """

    leaf: torch.Tensor
    sigma: torch.Tensor
    seed: torch.Tensor
    advantage: torch.Tensor

    def valid(self) -> torch.Tensor:
        return torch.isfinite(self.advantage)


def noised_leaves(rollout: Rollout, advantages: Advantages, ctx: UnitContext, fraction: float,
                  draw: LevelDraw | None = None) -> NoisedLeaves:
    """Each leaf at k noise levels with a noise seed per unit: unit j of a leaf has ``major`` j,
    ``minor`` the leaf's index within its tree, and its leaf's chain. The levels are ⌊T·fraction⌋ of
    the rollout's T, a random order per leaf (DiffusionNFT's draw), or what `draw` returns: the (k,)
    levels of one leaf from the rollout's levels and the tree's generator (the same k for every leaf).
    A tree's draws take its generator leaf by leaf, then its seeds."""
    levels = rollout.sigmas[:-1].float()
    T, per_tree = int(levels.shape[0]), rollout.plan.leaves
    if draw is None:
        k = max(1, int(T * fraction))

        def draw(grid: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return grid[torch.randperm(T, generator=g)[:k]]
    picks, seeds = [], []
    for g in ctx.generators:  # one tree after another, from the tree's own generator
        picks.append(torch.stack([draw(levels, g).float() for _ in range(per_tree)]))
        seeds.append(torch.randint(SEED_RANGE, (per_tree, int(picks[-1].shape[1])), generator=g))
    n = per_tree * len(ctx.generators)
    k = int(picks[0].shape[1]) if picks else int(draw(levels, torch.Generator()).shape[0])
    leaf = torch.arange(n).repeat_interleave(k)
    adv = advantages.values[-1].float().clone()
    if ctx.scored is not None:
        adv[~ctx.scored] = float("nan")
    return NoisedLeaves(
        tree=rollout.tree[-1][leaf].long(), major=torch.arange(k).repeat(n), minor=leaf % per_tree, chain=leaf,
        leaf=leaf, sigma=torch.cat(picks).reshape(-1) if picks else torch.zeros(0),
        advantage=adv[leaf], seed=torch.cat(seeds).reshape(-1) if seeds else torch.zeros(0, dtype=torch.long))


def unit_noise(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(U, *shape) standard normal noise, row u drawn from a CPU generator seeded with ``seeds[u]``."""
    out = torch.empty((int(seeds.shape[0]), *shape))
    g = torch.Generator()
    for u, s in enumerate(seeds.tolist()):
        out[u] = torch.randn(shape, generator=g.manual_seed(int(s)))
    return out


def noised(final: torch.Tensor, leaf: torch.Tensor, seed: torch.Tensor,
           sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows `leaf` of the clean leaves `final` (x0), their noise ε from `seed`, the noised
    x_t = (1 − t)·x0 + t·ε and t = `sigma` broadcast over the latent (all (N,) inputs)."""
    x0 = final[leaf.to(final.device)].float()
    noise = unit_noise(seed, tuple(x0.shape[1:])).to(x0.device)
    t = sigma.to(x0.device).view(-1, *([1] * (x0.dim() - 1)))
    return x0, noise, (1.0 - t) * x0 + t * noise, t


def renoise(units: NoisedLeaves, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The units' clean leaves x0, their noise ε, the noised x_t and t broadcast over the latent."""
    return noised(ctx.rollout.final, units.leaf, units.seed, units.sigma)


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


class DiffusionNFT:
    """DiffusionNFT (Zheng et al. 2025, released as NVlabs/DiffusionNFT): negative-aware fine-tuning on the
    forward process. Per leaf, an optimality weight r = clamp(clip(A, ±C)/(2C) + ½, 0, 1); at a noised
    x_t the implicit positive and negative velocities v⁺ = β·v_θ + (1 − β)·v_old and
    v⁻ = (1 + β)·v_old − β·v_θ, with v_old the old policy's (a lagged copy of the weights, no
    gradient); their clean predictions x̂0^± = x_t − t·v^±, each loss ``mean((x̂0^± − x0)²) /
    sg(max(mean|x̂0^± − x0|, 1e-5))``; the unit's loss ``C·(r·L⁺ + (1 − r)·L⁻)/β`` plus
    ``kl_beta·mean((v_θ − v_ref)²)`` to the base policy. The old policy starts as the weights,
    follows them after every iteration as ``old ← d·old + (1 − d)·θ`` with d = min(rate·s, max) at
    optimizer step s, and makes the rollout (``sample_with = "old"``), as released."""

    unit = "noised_leaves"
    keep = Keep()  # the leaves only
    metrics = {
        "loss": Metric("loss"),
        "policy_loss": Metric("policy_loss"),
        "positive_loss": Metric("positive_loss"),
        "negative_loss": Metric("negative_loss"),
        "optimality": Metric("r"),
        "old_deviation": Metric("old_deviation"),
        "kl": Metric("kl"),
    }

    def __init__(
        self,
        *,
        beta: Annotated[float, Range(gt=0), Doc(
            "β: how far the implicit positive and negative policies lie from the old one (released: 1.0; 0.1 "
            "for OCR)")] = 1.0,
        adv_clip: Annotated[float, Range(gt=0), Doc(
            "C: advantages clipped to ±C before the optimality weight; the loss is scaled by C")] = 5.0,
        adv_mode: Annotated[Literal["all", "positive_only", "negative_only", "one_only", "binary"], Doc(
            "the release's variants: every clipped advantage, only its positive or negative part, 1 for A > 0 "
            "else 0, or its sign")] = "all",
        timestep_fraction: Fraction = 0.99,
        kl_beta: Annotated[float, Range(ge=0), Doc(
            "weight of mean((v_θ − v_ref)²) to the base policy (released: 1e-4)")] = 1e-4,
        old_decay_rate: Annotated[float, Range(ge=0), Doc(
            "the old policy's decay grows by this per optimizer step ...")] = 0.001,
        old_decay_max: Annotated[float, Range(ge=0, lt=1), Doc(
            "... up to this (released decay_type 1: 0.001 and 0.5; 2: 0.0075 and 0.999 after 75 steps)")] = 0.5,
        old_decay_flat: Annotated[int, Range(ge=0), Doc("optimizer steps before the decay starts growing")] = 0,
        sample_with: Annotated[Literal["old", "current"], Doc(
            "the weights the rollout samples with: the old policy (released) or the trained one")] = "old",
    ) -> None:
        self.beta, self.adv_clip, self.adv_mode, self.fraction = beta, adv_clip, adv_mode, timestep_fraction
        self.kl_beta, self.sample_with = kl_beta, sample_with
        self.old_decay_rate, self.old_decay_max, self.old_decay_flat = old_decay_rate, old_decay_max, old_decay_flat

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0

    @property
    def lag(self) -> Lag:
        return Lag(rate=self.old_decay_rate, cap=self.old_decay_max, flat=self.old_decay_flat, every="iteration",
                   rollout=self.sample_with == "old")

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> NoisedLeaves:
        return noised_leaves(rollout, advantages, ctx, self.fraction)

    def optimality(self, advantage: torch.Tensor) -> torch.Tensor:
        """r in [0, 1] from each unit's advantage (the release's ``adv_mode`` applied after the clip)."""
        c = self.adv_clip
        a = advantage.clamp(-c, c)
        if self.adv_mode == "positive_only":
            a = a.clamp(0.0, c)
        elif self.adv_mode == "negative_only":
            a = a.clamp(-c, 0.0)
        elif self.adv_mode == "one_only":
            a = (a > 0).to(a.dtype)
        elif self.adv_mode == "binary":
            a = torch.sign(a)
        return (a / c / 2.0 + 0.5).clamp(0.0, 1.0)

    def loss(self, units: NoisedLeaves, ctx: LossContext) -> UnitLoss:
        x0, _, xt, t = renoise(units, ctx)
        sigma, cond = units.sigma.to(x0.device), ctx.cond.select(units.tree)
        with torch.no_grad():
            with ctx.lagged():  # before the forward with gradients: the old weights are swapped in place
                v_old = ctx.policy.velocity(xt, sigma, cond).float()
            if self.kl_beta > 0:
                with ctx.policy.reference():
                    v_ref = ctx.policy.velocity(xt, sigma, cond).float()
        v = ctx.policy.velocity(xt, sigma, cond).float()
        advantage = units.advantage.to(x0.device)
        finite = torch.isfinite(advantage)
        r = self.optimality(torch.where(finite, advantage, torch.zeros_like(advantage)))
        positive = self.beta * v + (1.0 - self.beta) * v_old
        negative = (1.0 + self.beta) * v_old - self.beta * v
        l_pos, l_neg = _weighted_x0_error(xt - t * positive, x0), _weighted_x0_error(xt - t * negative, x0)
        policy = self.adv_clip * (r * l_pos + (1.0 - r) * l_neg) / self.beta
        values = {"policy_loss": policy.detach().float(), "positive_loss": l_pos.detach().float(),
                  "negative_loss": l_neg.detach().float(), "r": r.detach(),
                  "old_deviation": per_sample_mean((v - v_old) ** 2).detach()}
        loss = policy
        if self.kl_beta > 0:
            kl = per_sample_mean((v - v_ref) ** 2)
            loss = loss + self.kl_beta * kl
            values["kl"] = kl.detach()
        return UnitLoss(loss.float(), finite, values)


def _weighted_x0_error(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """DiffusionNFT's adaptively weighted error of a clean prediction: ``mean((x̂0 − x0)²) /
    sg(max(mean|x̂0 − x0|, 1e-5))`` per sample, the weight taken in fp64 as released (fp64 out)."""
    with torch.no_grad():
        weight = per_sample_mean((x0_pred.double() - x0.double()).abs()).clamp(min=1e-5)
    return per_sample_mean((x0_pred - x0) ** 2 / weight.view(-1, *([1] * (x0.dim() - 1))))
