"""Group-relative advantages over the leaves of each tree (DanceGRPO)."""

from __future__ import annotations

import torch

from grpo.core.advantage import ClampOption, normalise_groups
from grpo.core.tree import Advantages, Rollout


class GroupAdvantage:
    """A = (R − mean R) / (std R + 1e-8) over the leaves of one tree, clamped; every edge carries
    the mean advantage of the leaves below it (for chains: its own leaf's)."""

    def __init__(self, *, advantage_clamp: ClampOption = 5.0) -> None:
        self.advantage_clamp = advantage_clamp

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        leaf_adv = normalise_groups(rewards, rollout.plan.leaves, self.advantage_clamp)
        return Advantages([rollout.reduce_leaves(leaf_adv, k + 1) for k in range(rollout.steps)])
