"""DanceGRPO's timestep fraction: train a random subset of steps of every chain."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from grpo.core.errors import UserError
from grpo.core.pruner import PruneContext, best_and_worst
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout, TreePlan


class TimestepFraction:
    """Per chain (leaf path), train a random subset of its candidate steps.

    The candidates are all T steps (DanceGRPO), or the steps ``step_window = [start, stop)`` when
    given; `ignore_last` removes the last step from them. How many: with ``step_rounding = "up"``
    (this project's default) ⌈f·W⌉ of the W steps of the window (all T without one); with
    ``"down"``, ⌊f·C⌋ of the C candidates, as DanceGRPO's released trainer counts (it always
    drops the last step: ⌊f·(T − 1)⌋). Which: a random subset per chain (``step_choice =
    "random"``), or the first candidates of every chain (``"first"``, Flow-GRPO: ⌊0.99·10⌋ = 9 →
    steps 0-8). An edge shared by several chains is kept when any of them keeps its step.
    """

    def __init__(
        self,
        *,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Doc("share f of candidate steps trained per chain")] = 0.6,
        ignore_last: Annotated[bool, Doc("never train the last step")] = False,
        step_window: Annotated[list[int], Range(ge=0), Doc("[start, stop) of candidate steps; empty = all")] = [],  # noqa: B006
        step_rounding: Annotated[Literal["up", "down"], Doc(
            "⌈f·window⌉ steps, or ⌊f·candidates⌋ as DanceGRPO's released trainer")] = "up",
        step_choice: Annotated[Literal["random", "first"], Doc(
            "a random subset of the candidates per chain (DanceGRPO), or the first ones (Flow-GRPO)")] = "random",
    ) -> None:
        if step_window and (len(step_window) != 2 or step_window[0] >= step_window[1]):
            raise UserError(f"step_window must be [start, stop) with start < stop, got {step_window}",
                            where="step_window")
        self.timestep_fraction, self.ignore_last, self.step_window = timestep_fraction, ignore_last, list(step_window)
        self.step_rounding, self.step_choice = step_rounding, step_choice

    def candidates(self, steps: int) -> torch.Tensor:
        start, stop = self.step_window if self.step_window else (0, steps)
        return torch.arange(start, min(stop, steps - 1 if self.ignore_last else steps))

    def trained_per_chain(self, steps: int) -> int:
        """How many steps each chain trains in a tree of `steps` steps."""
        n = self.candidates(steps).numel()
        if self.step_rounding == "down":
            return int(self.timestep_fraction * n)
        span = self.step_window[1] - self.step_window[0] if self.step_window else steps
        return min(math.ceil(self.timestep_fraction * span), n)

    def check_plan(self, plan: TreePlan) -> None:
        if self.step_window and self.step_window[1] > plan.steps:
            raise UserError(f"step_window {self.step_window} reaches beyond the sampler's {plan.steps} steps",
                            where="step_window", hint=f"a window within [0, {plan.steps}), e.g. "
                                                      f"[0, {min(self.step_window[1], plan.steps)}], or [] for every step")
        if self.trained_per_chain(plan.steps) == 0:
            raise UserError(f"timestep_fraction {self.timestep_fraction} of {self.candidates(plan.steps).numel()} "
                            "candidate steps trains no step", where="timestep_fraction",
                            hint="raise timestep_fraction, widen step_window, or use step_rounding = 'up'")

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        steps = rollout.steps
        candidates = self.candidates(steps)
        if candidates.numel() == 0:
            return EdgeSet([torch.zeros_like(m) for m in edges.masks])
        keep = self.trained_per_chain(steps)
        n_leaves = rollout.states[-1].shape[0]
        chosen = torch.zeros(n_leaves, steps, dtype=torch.bool)
        if self.step_choice == "first":
            chosen[:, candidates[:keep]] = True
        for leaf in range(n_leaves if self.step_choice == "random" else 0):
            chosen[leaf, candidates[torch.randperm(candidates.numel(), generator=ctx.generator)[:keep]]] = True
        masks = []
        for k, mask in enumerate(edges.masks):
            per_node = rollout.leaves_per_node(k + 1)
            any_chain = chosen[:, k].reshape(-1, per_node).any(dim=1)
            masks.append(mask & any_chain)
        return EdgeSet(masks)


class BestOfN:
    """Of each tree's leaves, train only the chains of the `keep` / 2 best and `keep` / 2 worst by
    advantage (DanceGRPO's video recipe, ``bestofn`` = 8 of 24 generations). An edge is trained when
    a kept leaf is below it; a tree with no more than `keep` leaves keeps them all."""

    def __init__(self, *, keep: Annotated[int, Range(ge=2), Doc("chains trained per tree: half best, half worst")] = 8
                 ) -> None:
        self.keep = keep

    def kept_leaves(self, rollout: Rollout, leaf_advantage: torch.Tensor) -> torch.Tensor:
        """(N_T,) bool: the leaves whose chains are trained."""
        return best_and_worst(leaf_advantage, rollout.plan.leaves, lambda n: min(self.keep, n))

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        kept = self.kept_leaves(rollout, advantages.values[-1])
        return EdgeSet([m & kept.reshape(-1, rollout.leaves_per_node(k + 1)).any(dim=1)
                        for k, m in enumerate(edges.masks)])
