"""Reward fusion and depth-wise advantages (BranchGRPO)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from grpo.core.advantage import ClampOption, normalise_groups
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, Rollout


def fuse_rewards(rollout: Rollout, rewards: torch.Tensor, fusion: str, alpha: float) -> list[torch.Tensor]:
    """A reward for every node, by depth (index d holds (N_d,)).

    ``mean``: the mean reward of the node's leaf descendants. ``path-prob``: bottom-up,
    ``R(n) = Σ_c softmax_c(α·ℓ(n→c))·R(c)`` over the node's children; a single child passes its
    reward up.
    """
    rewards = rewards.float()
    T = rollout.steps
    if fusion == "mean":
        return [rollout.reduce_leaves(rewards, d) for d in range(T + 1)]
    fused = [rewards]
    for k in range(T - 1, -1, -1):
        b = rollout.plan.branch[k]
        below = fused[0].reshape(-1, b)
        if b == 1:
            fused.insert(0, below[:, 0])
            continue
        weights = torch.softmax(alpha * rollout.log_prob[k].float().reshape(-1, b), dim=1)
        fused.insert(0, (weights * below).sum(dim=1))
    return fused


class DepthWiseAdvantage:
    """Within each tree and depth, over every node of that depth (cousins included):
    A = (R − mean) / (std + 1e-8) with the unbiased std, 0 for a single node or a flat depth,
    clamped. The edge into a node carries that node's advantage."""

    def __init__(
        self,
        *,
        fusion: Annotated[Literal["mean", "path-prob"], Doc("how internal nodes get a reward")] = "mean",
        fusion_alpha: Annotated[float, Range(ge=0), Doc("temperature α of path-prob fusion")] = 1.0,
        advantage_clamp: ClampOption = 5.0,
    ) -> None:
        self.fusion, self.fusion_alpha, self.advantage_clamp = fusion, fusion_alpha, advantage_clamp

    @property
    def needs_log_prob(self) -> bool:
        """Path-probability fusion weighs children by the log-probabilities of their edges."""
        return self.fusion == "path-prob"

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        fused = fuse_rewards(rollout, rewards, self.fusion, self.fusion_alpha)
        plan = rollout.plan
        return Advantages(
            [normalise_groups(fused[k + 1], plan.live(k + 1), self.advantage_clamp) for k in range(rollout.steps)]
        )
