"""Group-relative advantages over the leaves of each tree (DanceGRPO)."""

from __future__ import annotations

from typing import Annotated

import torch

from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, Rollout


def normalise_groups(values: torch.Tensor, group: int, clamp: float, eps: float = 1e-8) -> torch.Tensor:
    """(values − mean) / (std + eps) within consecutive groups of `group`, unbiased std, clamped.

    Groups of one member, or whose std is below 1e-6, get 0.
    """
    v = values.float().reshape(-1, group)
    if group < 2:
        return torch.zeros_like(values, dtype=torch.float32)
    mean = v.mean(dim=1, keepdim=True)
    std = v.std(dim=1, unbiased=True, keepdim=True)
    adv = (v - mean) / (std + eps)
    adv = torch.where(std < 1e-6, torch.zeros_like(adv), adv)
    return adv.clamp(-clamp, clamp).reshape(-1)


class GroupAdvantage:
    """A = (R − mean R) / (std R + 1e-8) over the leaves of one tree, clamped; every edge carries
    the mean advantage of the leaves below it (for chains: its own leaf's)."""

    def __init__(self, *, clamp: Annotated[float, Range(gt=0), Doc("bound on the magnitude of an advantage")] = 5.0) -> None:
        self.clamp = clamp

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        leaf_adv = normalise_groups(rewards, rollout.plan.leaves, self.clamp)
        return Advantages([rollout.reduce_leaves(leaf_adv, k + 1) for k in range(rollout.steps)])
