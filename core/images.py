"""Sample grids with captions."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def caption_grid(images: torch.Tensor, captions: list[str], *, columns: int = 8, scale: int = 3) -> Image.Image:
    """A PIL grid of images (N, 3, H, W) in [0, 1], each with its caption written below it."""
    n, _, h, w = images.shape
    cell_w = max(w * scale, 96)
    font = ImageFont.load_default()
    lines = [textwrap.wrap(c, width=max(cell_w // 6, 8))[:4] for c in captions]
    text_h = 11 * max((len(ls) for ls in lines), default=1) + 4
    cell_h = h * scale + text_h
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        tile = Image.fromarray(pixels[i]).resize((w * scale, h * scale), Image.NEAREST)
        x0, y0 = c * cell_w + (cell_w - w * scale) // 2, r * cell_h
        canvas.paste(tile, (x0, y0))
        for j, line in enumerate(lines[i]):
            draw.text((c * cell_w + 3, y0 + h * scale + 2 + 11 * j), line, fill=(0, 0, 0), font=font)
    return canvas


def caption_video_grid(videos: torch.Tensor, captions: list[str], **kwargs) -> list[Image.Image]:
    """One captioned grid per frame of videos (N, F, 3, H, W) in [0, 1]: the frames of an animation."""
    return [caption_grid(videos[:, f], captions, **kwargs) for f in range(videos.shape[1])]


def gif_bytes(frames: list[Image.Image], fps: float) -> bytes:
    """An endlessly looping animated GIF of `frames` at `fps`."""
    import io

    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=int(round(1000 / fps)), loop=0)
    return out.getvalue()


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
