"""Colourfulness of an image (Hasler and Süsstrunk, 2003), a reward that needs no weights."""

from typing import Annotated

import torch
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range


class Colourfulness:
    """Hasler–Süsstrunk colourfulness σ_rgyb + 0.3·μ_rgyb on 0-255 pixel values, divided by `scale`."""

    media = "image"

    def __init__(self, *, scale: Annotated[float, Range(gt=0), Doc("divide the metric by this")] = 100.0) -> None:
        self.scale = scale

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        x = images.float().clamp(0, 1) * 255.0
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
        spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
        centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
        return RewardOutput((spread + 0.3 * centre) / self.scale, {"spread": spread / self.scale})
