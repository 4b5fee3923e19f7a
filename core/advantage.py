"""The AdvantageEstimator protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .tree import Advantages, Rollout


@runtime_checkable
class AdvantageEstimator(Protocol):
    """Turns leaf rewards into one advantage per edge (reward fusion lives here)."""

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        """Args: rollout (P trees); rewards (N_T,) fp32 leaf rewards in leaf order.

        Returns per-step advantages aligned with ``rollout.states[k + 1]``.
        """
        ...
