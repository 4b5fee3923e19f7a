"""The TreeTopology protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .tree import TreePlan


@runtime_checkable
class TreeTopology(Protocol):
    """A static rollout-tree shape."""

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        """The plan of one tree over `steps` denoising steps at `iteration` (a plan may change over
        training, e.g. a sliding SDE window); raises UserError if it does not fit."""
        ...
