"""BranchGRPO's branching tree, with BranchGRPO-Mix's SDE window."""

from __future__ import annotations

import math
from typing import Annotated

from grpo.core.errors import UserError
from grpo.core.schema import Doc, Range
from grpo.core.tree import TreePlan, compress_tail

SplitPoints = Annotated[list[int], Range(ge=0), Doc("steps at which nodes split")]
NumSplits = Annotated[int, Range(ge=0), Doc("if > 0: this many evenly spaced split points instead")]
BranchFactor = Annotated[int, Range(ge=2), Doc("children per split b")]
SplitNoiseScale = Annotated[float, Range(gt=0), Doc("λ: noise scale of split steps")]
WindowStart = Annotated[int, Range(ge=0), Doc("first step of the SDE window")]
WindowSlideEvery = Annotated[int, Range(ge=0), Doc("iterations between window moves (0 = fixed)")]
WindowStride = Annotated[int, Range(ge=1), Doc("steps the window moves each time")]


def even_split_points(steps: int, count: int) -> list[int]:
    """`count` split points evenly spaced over the first half of the steps: 4 of 20 → 0, 3, 6, 9."""
    spacing = max(1, math.ceil(steps / (2 * count)))
    return [min(i * spacing, steps - 1) for i in range(count)]


class Branching:
    """Split every live node into `branch_factor` children at each split point (BranchGRPO).

    A split draws the children ``x = μ + λ·τ·ε`` with the split noise scale λ. With an SDE window
    (BranchGRPO-Mix) only split steps and the steps inside the window are stochastic; the others
    are deterministic ODE steps that are never trained. With ``ode_between_splits`` and no window,
    only the split steps are stochastic: the tree of an objective on the leaves, whose leaves differ
    by their split noise alone. The window can slide: every
    `window_slide_every` iterations it moves `window_stride` steps later (MixGRPO's progressive
    window), stopping at the last step.
    """

    def __init__(
        self,
        *,
        split_points: SplitPoints = [0, 3, 6, 9],  # noqa: B006
        num_splits: NumSplits = 0,
        branch_factor: BranchFactor = 2,
        split_noise_scale: SplitNoiseScale = 4.0,
        window_size: Annotated[int, Range(ge=0), Doc("SDE window size w (0 = every step is SDE)")] = 0,
        window_start: WindowStart = 0,
        window_slide_every: WindowSlideEvery = 0,
        window_stride: WindowStride = 1,
        flash_ratio: Annotated[float, Range(ge=0, lt=1), Doc(
            "Mix-Flash: the ODE steps after the last stochastic step become flash_solver steps on a grid "
            "of ⌊(T − last)·ratio⌋ points (0 = off)")] = 0.0,
        flash_solver: Annotated[str, Doc("the registered solver of the compressed tail")] = "dpm-solver++",
        ode_between_splits: Annotated[bool, Doc(
            "every step that is not a split (nor in the SDE window) is deterministic, also with window_size 0")] = False,
    ) -> None:
        self.split_points = list(split_points)
        self.num_splits = num_splits
        self.branch_factor = branch_factor
        self.split_noise_scale = split_noise_scale
        self.window_size, self.window_start = window_size, window_start
        self.window_slide_every, self.window_stride = window_slide_every, window_stride
        self.flash_ratio, self.flash_solver = flash_ratio, flash_solver
        self.ode_between_splits = ode_between_splits

    def splits(self, steps: int) -> list[int]:
        points = even_split_points(steps, self.num_splits) if self.num_splits else self.split_points
        if not points:
            raise UserError("a branching tree needs at least one split point", where="split_points")
        if sorted(set(points)) != list(points) or points[-1] >= steps:
            raise UserError(
                f"split points must be increasing, distinct and below sampler.steps = {steps}; got {points}",
                where="split_points",
            )
        if points[-1] == steps - 1:
            raise UserError(f"a split at the last step ({steps - 1}) gives {self.branch_factor} identical leaves: its "
                            "children all decode from the same x̂0", where="split_points",
                            hint=f"split before step {steps - 1}, or use more sampler.steps")
        return list(points)

    def window(self, steps: int, iteration: int) -> range:
        """The SDE window's steps at `iteration` (all steps when there is no window, none with
        ``ode_between_splits``)."""
        if self.window_size == 0:
            return range(0) if self.ode_between_splits else range(steps)
        moves = iteration // self.window_slide_every if self.window_slide_every else 0
        start = min(self.window_start + moves * self.window_stride, max(steps - self.window_size, 0))
        return range(start, min(start + self.window_size, steps))

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        points = set(self.splits(steps))
        window = self.window(steps, iteration)
        plan = TreePlan(
            branch=tuple(self.branch_factor if k in points else 1 for k in range(steps)),
            noise_scale=tuple(self.split_noise_scale if k in points else 1.0 for k in range(steps)),
            stochastic=tuple(k in points or k in window for k in range(steps)),
        )
        return compress_tail(plan, self.flash_ratio, self.flash_solver) if self.flash_ratio else plan
