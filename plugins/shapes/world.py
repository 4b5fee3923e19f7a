"""The `shapes` world: captions, the procedural renderer and the prompt splits.

Images are 32×32 RGB with one to three non-overlapping objects of one shape and one colour on a
plain background, rendered with 4× supersampling (anti-aliased edges) and a slight colour jitter.
Every caption has the form ``"<count> <colour> <shape(s)> on a <background> background"``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SUPERSAMPLE = 4

COUNT_WORDS = ("one", "two", "three")
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 190, 45),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 35),
    "cyan": (35, 215, 220),
    "magenta": (215, 45, 215),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
# Object half-extent range (pixels) by object count, chosen so that three objects always fit.
SIZE_RANGE = {1: (5.0, 8.5), 2: (4.5, 7.0), 3: (4.0, 5.8)}
GAP = 2.0  # minimum distance (pixels) between objects' bounding boxes
N_HELD_OUT = 16


@dataclass(frozen=True)
class Scene:
    """What a caption asks for."""

    count: int
    colour: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{COUNT_WORDS[self.count - 1]} {self.colour} {noun} on a {self.background} background"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order."""
    words = list(COUNT_WORDS) + list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES]
    return words + ["on", "a"] + list(BACKGROUNDS) + ["background"]


def _quoted(text: str, limit: int = 80) -> str:
    """A caption as a message quotes it: whole when short, else its start and its length."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def parse_caption(caption: str) -> Scene:
    """Parse a caption of the shapes grammar; raises ValueError naming what is wrong."""
    words = caption.strip().lower().split()
    if len(words) != 7 or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(
            f"{_quoted(caption)} is not a shapes caption; expected e.g. 'two red circles on a blue background'"
        )
    count_w, colour, noun, _, _, bg, _ = words
    if count_w not in COUNT_WORDS:
        raise ValueError(f"{_quoted(caption)}: count must be one of {', '.join(COUNT_WORDS)}")
    count = COUNT_WORDS.index(count_w) + 1
    shape = noun[:-1] if noun.endswith("s") else noun
    if shape not in SHAPES or (noun.endswith("s") != (count > 1)):
        raise ValueError(f"{_quoted(caption)}: shape word {noun!r} does not fit count {count_w!r}")
    if colour not in COLOURS:
        raise ValueError(f"{_quoted(caption)}: colour must be one of {', '.join(COLOURS)}")
    if bg not in BACKGROUNDS:
        raise ValueError(f"{_quoted(caption)}: background must be one of {', '.join(BACKGROUNDS)}")
    return Scene(count, colour, shape, bg)


def all_scenes() -> list[Scene]:
    return [
        Scene(n, c, s, b)
        for n, c, s, b in itertools.product((1, 2, 3), COLOURS, SHAPES, BACKGROUNDS)
    ]


def split_scenes() -> tuple[list[Scene], list[Scene]]:
    """(train, held_out): 16 compositions are held out for compositional generalisation.

    Held-out scenes are drawn with a fixed seed so that every word still occurs in training.
    """
    scenes = all_scenes()
    rng = random.Random(1234)
    held = rng.sample(scenes, N_HELD_OUT)
    held_set = set(held)
    return [s for s in scenes if s not in held_set], sorted(held, key=lambda s: s.caption)


def _shape_coverage(shape: str, cx: float, cy: float, s: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the supersampled grid points inside one object."""
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= s * s
    if shape == "square":
        h = 0.88 * s
        return (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    # Upright isosceles triangle: apex at (cx, cy - s), base from (cx - s, cy + s) to (cx + s, cy + s).
    inside_y = (ys >= cy - s) & (ys <= cy + s)
    half_width = s * (ys - (cy - s)) / (2 * s)
    return inside_y & (np.abs(xs - cx) <= half_width)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render one image of `scene` as float32 RGB in [0, 1], shape (32, 32, 3)."""
    n = IMAGE_SIZE * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    xs, ys = np.meshgrid(coords, coords)
    lo, hi = SIZE_RANGE[scene.count]
    placed: list[tuple[float, float, float]] = []
    attempts = 0
    while len(placed) < scene.count:
        attempts += 1
        if attempts > 200:  # a crowded start: place everything again
            placed.clear()
            attempts = 0
        s = float(rng.uniform(lo, hi))
        cx, cy = (float(v) for v in rng.uniform(s + 0.5, IMAGE_SIZE - s - 0.5, size=2))
        # Objects never touch: their bounding boxes are at least GAP apart along some axis.
        if all(max(abs(cx - px), abs(cy - py)) >= s + ps + GAP for px, py, ps in placed):
            placed.append((cx, cy, s))
    mask = np.zeros((n, n), dtype=bool)
    for cx, cy, s in placed:
        x0, x1 = (max(int((c - 1.5 * s - 1) * SUPERSAMPLE), 0) for c in (cx, cx + 3 * s + 2))
        y0, y1 = (max(int((c - 1.5 * s - 1) * SUPERSAMPLE), 0) for c in (cy, cy + 3 * s + 2))
        win = (slice(y0, min(y1, n)), slice(x0, min(x1, n)))
        mask[win] |= _shape_coverage(scene.shape, cx, cy, s, xs[win], ys[win])
    alpha = mask.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))
    bg = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32) / 255.0
    colour = np.asarray(COLOURS[scene.colour], dtype=np.float32) / 255.0
    colour = np.clip(colour + rng.uniform(-0.04, 0.04, size=3).astype(np.float32), 0.0, 1.0)
    image = bg[None, None, :] * (1.0 - alpha[..., None]) + colour[None, None, :] * alpha[..., None]
    return image.astype(np.float32)


def render_batch(scenes: list[Scene], rng: np.random.Generator) -> np.ndarray:
    """Render several scenes as float32 (N, 3, 32, 32) in [0, 1]."""
    return np.stack([render(s, rng).transpose(2, 0, 1) for s in scenes])
