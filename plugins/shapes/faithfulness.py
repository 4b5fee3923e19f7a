"""A GenEval in miniature: does an image show what its shapes caption asks for?

The analysis is deterministic and runs on the CPU in about a millisecond per image:

1. **Background**: the median of the border pixels, matched to the nearest named background.
2. **Unmixing**: every pixel is explained as ``bg + α·(c_k − bg)`` for each named colour c_k; the
   colour with the least residual wins. This labels anti-aliased edges correctly, where a plain
   nearest-colour rule would not. Pixels with α ≥ 0.5 belong to objects.
3. **Objects**: 8-connected components of object pixels with an area of at least 5 pixels.
4. **Shape** of an object from its bounding-box fill ratio (circle ≈ 0.79, square ≈ 1, triangle ≈
   0.5) and the share of its mass in the top half of its box (triangle ≈ 0.25, others 0.5).

The score is ``0.15·background + 0.25·colour + 0.30·count + 0.30·shape`` in [0, 1], where colour
and shape are the fractions of detected objects that are right and count is ``1/(1+|n−N|)``.
An image is an **exact match** when the background, the count and every object's colour and shape
are right.

``shape_soft`` grades each object by how close its (fill ratio, top-half share) lies to the target
shape's prototype, measured on rendered scenes (a Gaussian likeness in [0, 1]; widths about twice
the spread of rendered objects); ``soft`` is the weighted score with ``shape_soft`` in place of
``shape``. A graded reward separates the members of a group that the right/wrong classification
scores alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import BACKGROUNDS, COLOURS, SHAPES, Scene

WEIGHTS = {"background": 0.15, "colour": 0.25, "count": 0.30, "shape": 0.30}
MIN_AREA = 5
_BG_NAMES = list(BACKGROUNDS)
_BG = np.asarray([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float32) / 255.0
_COLOUR_NAMES = list(COLOURS)
_COLOURS = np.asarray([COLOURS[c] for c in _COLOUR_NAMES], dtype=np.float32) / 255.0
_EIGHT = np.ones((3, 3), dtype=bool)


# (fill ratio, top-half share) of rendered objects (mean over 324 each) and the likeness widths
PROTOTYPES = {"circle": (0.787, 0.499), "square": (0.996, 0.501), "triangle": (0.570, 0.277)}
LIKENESS_WIDTH = (0.08, 0.05)


@dataclass(frozen=True)
class Analysis:
    """Component scores of one image (each in [0, 1]) and the weighted total."""

    background: float
    colour: float
    count: float
    shape: float
    exact: float
    n_objects: int
    shape_soft: float = 0.0

    @property
    def score(self) -> float:
        return sum(w * getattr(self, k) for k, w in WEIGHTS.items())

    @property
    def soft(self) -> float:
        """The score with the graded ``shape_soft`` in place of ``shape``."""
        return self.score + WEIGHTS["shape"] * (self.shape_soft - self.shape)


def shape_features(mask: np.ndarray, alpha: np.ndarray) -> tuple[float, float] | None:
    """(fill ratio of the bounding box, share of the coverage in the top half) of one object from its
    pixel mask and coverage α (both cropped to its box); None for an object with no coverage."""
    h, w = mask.shape
    mass = alpha * mask
    total = float(mass.sum())
    if total <= 0:
        return None
    fill = float(mask.sum()) / float(h * w)
    rows = np.arange(h, dtype=np.float32) + 0.5
    top_share = float(mass[rows < h / 2.0].sum()) / total
    if h % 2 == 1:  # the middle row counts half to each side
        top_share += 0.5 * float(mass[h // 2].sum()) / total
    return fill, top_share


def classify_shape(features: tuple[float, float] | None) -> str:
    """Classify one object from its `shape_features` (an object with no coverage counts as a circle)."""
    if features is None:
        return "circle"
    fill, top_share = features
    if top_share < 0.40 and fill < 0.75:
        return "triangle"
    return "square" if fill > 0.89 else "circle"


def shape_likeness(features: tuple[float, float] | None, shape: str) -> float:
    """How much one object looks like `shape`: exp(−½·d²), d the distance of its `shape_features`
    to the shape's prototype in units of `LIKENESS_WIDTH` (0 for an object with no coverage)."""
    if features is None:
        return 0.0
    (fill, top), (f0, t0), (wf, wt) = features, PROTOTYPES[shape], LIKENESS_WIDTH
    return float(np.exp(-0.5 * (((fill - f0) / wf) ** 2 + ((top - t0) / wt) ** 2)))


def analyse(image: np.ndarray, scene: Scene) -> Analysis:
    """Analyse one float RGB image (H, W, 3) in [0, 1] against the scene its caption describes."""
    img = np.asarray(image, dtype=np.float32)
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    median = np.median(border, axis=0)
    bg_index = int(np.argmin(((_BG - median) ** 2).sum(axis=1)))
    bg = _BG[bg_index]
    # Unmix each pixel against each colour: p ≈ bg + α (c − bg).
    d = _COLOURS - bg  # (K, 3)
    diff = img - bg  # (H, W, 3)
    alpha = np.clip((diff @ d.T) / (d * d).sum(axis=1), 0.0, 1.0)  # (H, W, K)
    residual = ((diff[..., None, :] - alpha[..., None] * d) ** 2).sum(axis=-1)  # (H, W, K)
    label = residual.argmin(axis=-1)
    best_alpha = np.take_along_axis(alpha, label[..., None], axis=-1)[..., 0]
    objects = best_alpha >= 0.5
    components, n_comp = ndimage.label(objects, structure=_EIGHT)
    target_colour = _COLOUR_NAMES.index(scene.colour)
    colour_ok: list[bool] = []
    shape_ok: list[bool] = []
    likeness: list[float] = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        comp = components[box] == index
        if comp.sum() < MIN_AREA:
            continue
        labels = label[box][comp]
        colour_ok.append(int(np.bincount(labels, minlength=len(_COLOUR_NAMES)).argmax()) == target_colour)
        features = shape_features(comp, best_alpha[box])
        shape_ok.append(classify_shape(features) == scene.shape)
        likeness.append(shape_likeness(features, scene.shape))
    n = len(colour_ok)
    background = float(_BG_NAMES[bg_index] == scene.background)
    colour = float(np.mean(colour_ok)) if n else 0.0
    shape = float(np.mean(shape_ok)) if n else 0.0
    count = 1.0 / (1.0 + abs(n - scene.count))
    exact = float(background == 1.0 and n == scene.count and all(colour_ok) and all(shape_ok))
    shape_soft = float(np.mean(likeness)) if n else 0.0
    return Analysis(background, colour, count, shape, exact, n, shape_soft)


__all__ = ["Analysis", "analyse", "classify_shape", "shape_features", "shape_likeness", "WEIGHTS", "SHAPES"]
