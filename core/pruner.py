"""The Pruner protocol: which edges the update trains."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .tree import Advantages, EdgeSet, Rollout


@runtime_checkable
class Pruner(Protocol):
    """Narrows the set of trained edges. Never changes the rollout, the rewards or the advantages."""

    def __call__(
        self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, iteration: int, generator: torch.Generator
    ) -> EdgeSet:
        """Return a subset of `edges` (a new EdgeSet); `generator` is the iteration's seeded RNG."""
        ...
