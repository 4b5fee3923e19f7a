"""The Pruner protocol: which edges the update trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .tree import Advantages, EdgeSet, Rollout, TreePlan


@dataclass(frozen=True)
class PruneContext:
    """Where training stands.

    Attributes:
        iteration: the current iteration (0-based).
        total_iterations: ``train.iterations``.
        generator: the iteration's seeded CPU generator (use it for any randomness); with several
            ranks, each rank has its own stream.
        gather: concatenates a tensor over every rank's trees, in rank order (the identity on one
            rank); for a pruner that compares across all trees of the iteration.
        rank: this process's rank (every rank holds the same number of trees).
    """

    iteration: int
    total_iterations: int
    generator: torch.Generator
    gather: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t)
    rank: int = 0


def best_and_worst(values: torch.Tensor, group: int, count: Callable[[int], int]) -> torch.Tensor:
    """(N,) bool: within each run of `group` consecutive values, the ⌊k/2⌋ largest and the k − ⌊k/2⌋
    smallest, k = ``count(size of the run)`` (ties broken by position). The chains pruners keep by
    advantage (BranchGRPO's width pruning, DanceGRPO's best-of-N)."""
    keep = torch.zeros_like(values, dtype=torch.bool)
    for start in range(0, values.numel(), group):
        run = values[start:start + group]
        k = count(run.numel())
        order = torch.argsort(run, descending=True, stable=True)
        best = k // 2
        keep[start + torch.cat([order[:best], order[run.numel() - (k - best):]])] = True
    return keep


@runtime_checkable
class Pruner(Protocol):
    """Narrows the set of trained edges. Never changes the rollout, the rewards or the advantages."""

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        """Return a subset of `edges` (a new EdgeSet)."""
        ...

    def check_plan(self, plan: TreePlan) -> None:
        """Optional (default: accept any tree): raise ``UserError`` with ``where`` = the offending
        option's name when the pruner's options do not fit the tree (``grpo validate`` reports it
        under the recipe table that chose the pruner)."""
        ...
