"""The Pruner protocol: which edges the update trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .tree import Advantages, EdgeSet, Rollout


@dataclass(frozen=True)
class PruneContext:
    """Where training stands.

    Attributes:
        iteration: the current iteration (0-based).
        total_iterations: ``train.iterations``.
        generator: the iteration's seeded CPU generator (use it for any randomness).
    """

    iteration: int
    total_iterations: int
    generator: torch.Generator


@runtime_checkable
class Pruner(Protocol):
    """Narrows the set of trained edges. Never changes the rollout, the rewards or the advantages."""

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        """Return a subset of `edges` (a new EdgeSet)."""
        ...
