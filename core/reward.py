"""The RewardModel protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class RewardOutput:
    """Scores of a batch.

    Attributes:
        scores: (N,) fp32, the reward that is optimized; NaN where the model could not score a sample
            (a failed request): the engine trains nothing from that sample and counts it.
        components: named (N,) fp32 tensors reported beside it (e.g. ``exact``, ``colour``).
    """

    scores: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class RewardModel(Protocol):
    """Scores generated media against their prompts.

    Attributes:
        media: ``"image"`` or ``"video"``: what it accepts.
        fps: optional (default None: frame rates do not matter to it); a video reward whose
            ``fps`` is 0 is given the model's fps when the run starts.
    """

    media: str
    fps: float | None

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        """Score images (N, 3, H, W) (or videos (N, F, 3, H, W)) float in [0, 1]; one prompt each.

        A score must not depend on what else is in the batch.
        """
        ...
