"""Rank advantages: robust to the scale and outliers of a reward."""

from typing import Annotated

import torch
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, Rollout


def centred_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 (ties share their mean rank), centred on 0 and divided by their std (0 if all tie)."""
    n = values.numel()
    order = torch.argsort(values, stable=True)
    ranks = torch.empty(n, dtype=torch.float32)
    ranks[order] = torch.arange(n, dtype=torch.float32)
    for v in torch.unique(values):  # ties: the mean of their ranks
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    centred = ranks - ranks.mean()
    std = centred.std(unbiased=True) if n > 1 else torch.tensor(0.0)
    return centred / std if std > 1e-6 else torch.zeros(n)


class RankAdvantage:
    """Per tree, each leaf's advantage is its centred, standardised rank among the tree's leaves;
    an edge carries the mean advantage of the leaves below it."""

    def __init__(self, *, clamp: Annotated[float, Range(gt=0), Doc("bound on the magnitude")] = 5.0) -> None:
        self.clamp = clamp

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        per_tree = rewards.float().reshape(rollout.num_trees, rollout.plan.leaves)
        leaf = torch.cat([centred_ranks(row) for row in per_tree]).clamp(-self.clamp, self.clamp)
        return Advantages([rollout.reduce_leaves(leaf, k + 1) for k in range(rollout.steps)])
