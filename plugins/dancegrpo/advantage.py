"""Group-relative advantages over the leaves of each tree (DanceGRPO, Flow-GRPO)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch

from grpo.core.advantage import ClampOption, normalise_groups
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, Rollout


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class GroupAdvantage:
    """A = (R − mean R) / (std + ε) over the leaves of one tree (a prompt's group), clamped; every
    edge carries the mean advantage of the leaves below it (for chains: its own leaf's).

    By default (DanceGRPO) the std is the group's own, unbiased, ε = 1e-8, and a flat group gets 0.
    Flow-GRPO's form is ``std = "global"`` (one std over every leaf of every rank, so a group's
    scale is the batch's), ``std_ddof = 0`` and ``std_eps = 1e-4``. MixGRPO's trimmed statistics
    (``trim_lowest`` = r) take the mean and std over each group without its ⌊r·G⌋ lowest rewards.
    """

    def __init__(
        self,
        *,
        advantage_clamp: ClampOption = 5.0,
        std: Annotated[Literal["group", "global"], Doc(
            "divide by each group's std, or by one std over every rank's leaves (Flow-GRPO's global_std)")] = "group",
        std_ddof: Annotated[Literal[0, 1], Doc("1: unbiased std (DanceGRPO), 0: population std (Flow-GRPO)")] = 1,
        std_eps: Annotated[float, Range(gt=0), Doc("ε added to the std")] = 1e-8,
        trim_lowest: Annotated[float, Range(ge=0, lt=1), Doc(
            "share of each group's lowest rewards left out of its mean and std (MixGRPO's trimmed_ratio)")] = 0.0,
        stats_precision: Annotated[Literal["fp32", "fp64"], Doc(
            "precision of the mean and std: fp32 (DanceGRPO's and MixGRPO's torch code) or fp64 (Flow-GRPO's numpy "
            "stat tracker, also DiffusionNFT's, AWM's and DGPO's); fp32 rounds the advantages of a near-flat group "
            "far from zero by up to 1e-3")] = "fp32",
    ) -> None:
        self.advantage_clamp, self.std, self.std_ddof, self.std_eps = advantage_clamp, std, std_ddof, std_eps
        self.trim_lowest, self.stats_precision = trim_lowest, stats_precision

    @property
    def uses_all_ranks(self) -> bool:
        return self.std == "global"

    def leaf_advantages(self, rewards: torch.Tensor, group: int,
                        gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
        """(N,) advantages of leaf rewards in consecutive groups of `group`."""
        fp64 = self.stats_precision == "fp64"
        if self.std == "group" and self.std_ddof == 1 and self.std_eps == 1e-8 and not self.trim_lowest and not fp64:
            return normalise_groups(rewards, group, self.advantage_clamp)
        dtype = torch.float64 if fp64 else torch.float32
        v = rewards.to(dtype).reshape(-1, group)
        kept = v.sort(dim=1).values[:, int(group * self.trim_lowest):]  # the lowest left out of the statistics
        if self.std == "global":
            std = gather(rewards.to(dtype)).std(correction=self.std_ddof)
        else:
            std = kept.std(dim=1, correction=self.std_ddof, keepdim=True)
        adv = (v - kept.mean(dim=1, keepdim=True)) / (std + self.std_eps)
        return adv.clamp(-self.advantage_clamp, self.advantage_clamp).reshape(-1).float()

    def __call__(self, rollout: Rollout, rewards: torch.Tensor,
                 gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> Advantages:
        leaf_adv = self.leaf_advantages(rewards, rollout.plan.leaves, gather)
        return Advantages([rollout.reduce_leaves(leaf_adv, k + 1) for k in range(rollout.steps)])
