"""DanceGRPO's timestep fraction: train a random subset of steps of every chain."""

from __future__ import annotations

import math
from typing import Annotated

import torch

from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout


class TimestepFraction:
    """Per chain (leaf path), keep a random ⌈f·T⌉ of the steps; `ignore_last` drops the last step.

    An edge shared by several chains is kept when any of them keeps its step.
    """

    def __init__(
        self,
        *,
        fraction: Annotated[float, Range(gt=0, le=1), Doc("share f of steps trained per chain")] = 0.6,
        ignore_last: Annotated[bool, Doc("never train the last step")] = False,
    ) -> None:
        self.fraction, self.ignore_last = fraction, ignore_last

    def __call__(
        self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, iteration: int, generator: torch.Generator
    ) -> EdgeSet:
        steps = rollout.steps
        candidates = steps - 1 if self.ignore_last else steps
        keep = min(math.ceil(self.fraction * steps), candidates)
        n_leaves = rollout.states[-1].shape[0]
        chosen = torch.zeros(n_leaves, steps, dtype=torch.bool)
        for leaf in range(n_leaves):
            chosen[leaf, torch.randperm(candidates, generator=generator)[:keep]] = True
        masks = []
        for k, mask in enumerate(edges.masks):
            per_node = rollout.leaves_per_node(k + 1)
            any_chain = chosen[:, k].reshape(-1, per_node).any(dim=1)
            masks.append(mask & any_chain)
        return EdgeSet(masks)
