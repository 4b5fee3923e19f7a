"""DanceGRPO's timestep fraction: train a random subset of steps of every chain."""

from __future__ import annotations

import math
from typing import Annotated

import torch

from grpo.core.pruner import PruneContext
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout


class TimestepFraction:
    """Per chain (leaf path), keep a random ⌈f·W⌉ of the W candidate steps.

    The candidates are all T steps (DanceGRPO), or the steps ``step_window = [start, stop)`` when given;
    `ignore_last` removes the last step from them. An edge shared by several chains is kept when any
    of them keeps its step.
    """

    def __init__(
        self,
        *,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Doc("share f of candidate steps trained per chain")] = 0.6,
        ignore_last: Annotated[bool, Doc("never train the last step")] = False,
        step_window: Annotated[list[int], Range(ge=0), Doc("[start, stop) of candidate steps; empty = all")] = [],  # noqa: B006
    ) -> None:
        if step_window and (len(step_window) != 2 or step_window[0] >= step_window[1]):
            from grpo.core.errors import UserError

            raise UserError(f"step_window must be [start, stop) with start < stop, got {step_window}",
                            where="strategy.step_window")
        self.timestep_fraction, self.ignore_last, self.step_window = timestep_fraction, ignore_last, list(step_window)

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        steps = rollout.steps
        start, stop = self.step_window if self.step_window else (0, steps)
        stop = min(stop, steps - 1 if self.ignore_last else steps)
        candidates = torch.arange(start, stop)
        if candidates.numel() == 0:
            return EdgeSet([torch.zeros_like(m) for m in edges.masks])
        span = self.step_window[1] - self.step_window[0] if self.step_window else steps
        keep = min(math.ceil(self.timestep_fraction * span),
                   candidates.numel())
        n_leaves = rollout.states[-1].shape[0]
        chosen = torch.zeros(n_leaves, steps, dtype=torch.bool)
        for leaf in range(n_leaves):
            chosen[leaf, candidates[torch.randperm(candidates.numel(), generator=ctx.generator)[:keep]]] = True
        masks = []
        for k, mask in enumerate(edges.masks):
            per_node = rollout.leaves_per_node(k + 1)
            any_chain = chosen[:, k].reshape(-1, per_node).any(dim=1)
            masks.append(mask & any_chain)
        return EdgeSet(masks)
