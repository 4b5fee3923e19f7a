"""Intervals of means, as evaluations and reports state them."""

from __future__ import annotations

import math

import torch


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of its 95% normal interval (1.96 standard errors; 0 for n < 2).
    Values that are not finite (a reward that could not score) are left out."""
    v = values.double()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return float(v.mean()) if v.numel() else float("nan"), 0.0
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))
