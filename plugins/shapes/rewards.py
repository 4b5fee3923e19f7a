"""Rewards of the shapes world: `shapes-faithfulness` and `jpeg-compressibility`."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image

from grpo.core.errors import UserError
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range

from .world import parse_caption


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float [0, 1] → (N, H, W, 3) uint8 (rounded)."""
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)


class ShapesFaithfulness:
    """Does the image show the caption's count, colour, shape and background? (GenEval in miniature)

    Reports ``background``, ``colour``, ``count``, ``shape``, ``score`` and the binary ``exact``;
    with ``target = "soft"`` also ``shape_soft`` and ``soft`` (the score with each object's shape
    graded by its likeness to the target shape instead of right/wrong).
    """

    media = "image"
    requires = ("scipy",)

    def __init__(
        self,
        *,
        target: Annotated[
            Literal["score", "soft", "exact", "background", "colour", "count", "shape"],
            Doc("which measure is the reward (the others are reported); 'soft' grades shapes"),
        ] = "score",
    ) -> None:
        self.target = target

    def check_prompts(self, prompts: list[str], where: str) -> None:
        """Every prompt must be a caption of the shapes grammar: checked before the model is built."""
        for i, prompt in enumerate(prompts):
            try:
                parse_caption(prompt)
            except ValueError as e:
                raise UserError(f"prompt {i + 1} of {len(prompts)}: {e}", where=where,
                                hint="shapes-faithfulness scores shapes captions only") from None

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"shapes-faithfulness expects (N, 3, H, W) images, got {tuple(images.shape)}")
        try:
            scenes = [parse_caption(p) for p in prompts]
        except ValueError as e:
            raise UserError(str(e), where="prompts", hint="shapes-faithfulness scores shapes captions only") from None
        from .faithfulness import WEIGHTS, analyse  # scipy, imported when images are scored

        pixels = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        results = [analyse(img, scene) for img, scene in zip(pixels, scenes, strict=True)]
        comps = {k: torch.tensor([getattr(r, k) for r in results]) for k in (*WEIGHTS, "exact")}
        comps["score"] = torch.tensor([r.score for r in results])
        if self.target == "soft":
            comps["shape_soft"] = torch.tensor([r.shape_soft for r in results])
            comps["soft"] = torch.tensor([r.soft for r in results])
        return RewardOutput(comps[self.target].float(), {k: v.float() for k, v in comps.items()})


class JpegCompressibility:
    """Negative JPEG size in kilobytes (Flow-GRPO's compressibility reward); higher = simpler image."""

    media = "image"
    requires = ("PIL",)

    def __init__(self, *, quality: Annotated[int, Range(ge=1, le=100), Doc("JPEG quality")] = 95) -> None:
        self.quality = quality

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        sizes = []
        for img in to_uint8(images):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell() / 1000.0)
        kb = torch.tensor(sizes, dtype=torch.float32)
        return RewardOutput(-kb, {"kilobytes": kb})
