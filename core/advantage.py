"""The AdvantageEstimator protocol."""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

import torch

from .schema import Doc, Range
from .tree import Advantages, Rollout

ClampOption = Annotated[float, Range(gt=0), Doc("bound on the magnitude of an advantage")]


def normalise_groups(values: torch.Tensor, group: int, clamp: float, eps: float = 1e-8) -> torch.Tensor:
    """(values − mean) / (std + eps) within consecutive groups of `group` (fp32), unbiased std,
    clamped to ±`clamp`. Groups of one member, or whose std is below 1e-6, get 0."""
    v = values.float().reshape(-1, group)
    if group < 2:
        return torch.zeros_like(values, dtype=torch.float32)
    mean = v.mean(dim=1, keepdim=True)
    std = v.std(dim=1, unbiased=True, keepdim=True)
    adv = (v - mean) / (std + eps)
    adv = torch.where(std < 1e-6, torch.zeros_like(adv), adv)
    return adv.clamp(-clamp, clamp).reshape(-1)


@runtime_checkable
class AdvantageEstimator(Protocol):
    """Turns leaf rewards into one advantage per edge (reward fusion lives here).

    Attributes:
        uses_all_ranks: optional (default False). True: the estimator is called with a third
            argument, ``gather``, which concatenates a tensor over every rank's trees in rank order
            (for statistics of the whole batch, such as Flow-GRPO's global std); every rank calls
            it the same number of times.
    """

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        """Args: rollout (P trees); rewards (N_T,) fp32 leaf rewards in leaf order.

        Returns per-step advantages aligned with ``rollout.states[k + 1]``.
        """
        ...
