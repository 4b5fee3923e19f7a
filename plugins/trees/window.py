"""A group of chains that is stochastic only inside a window of steps (MixGRPO, Flow-GRPO-Fast).

The window's start follows one of MixGRPO's released schedules. Outside the window every step is
a deterministic ODE step that is never trained. When the chains share their initial noise, the
ODE steps before the window are the same for all of them: the tree computes them once and splits
into the G chains at the window's first step.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np

from grpo.core.errors import UserError
from grpo.core.schema import Doc, Range
from grpo.core.tree import TreePlan, compress_tail

Schedule = Literal["fixed", "progressive", "decay", "exp-decay", "random"]


class SDEWindow:
    """G chains per prompt, SDE inside a window of `window_size` steps and ODE elsewhere.

    The window's steps lie in ``window_range = [lo, hi)`` (hi ≤ 0 counts from the last step:
    MixGRPO's ``[0, −2]`` never trains the last two steps; a value between 0 and 1 is that fraction
    of the T steps, rounded down: Flow-GRPO-Fast's ``[0, 0.5]`` is [0, T//2)). Where it starts at
    iteration i:

    - ``fixed``: at lo.
    - ``progressive`` (MixGRPO): at lo for `iters_per_window` iterations, then `window_stride`
      steps later, and so on; past the range it rolls back to lo (``roll_back``) or stays at the
      last start.
    - ``decay``: as progressive, but a window at start s stays for
      ``max(min, ⌊max·(1 − s/hi) + min·s/hi⌋)`` iterations (`max_iters_per_window`,
      `min_iters_per_window`): late, low-noise windows get fewer iterations.
    - ``exp-decay``: stays for ``⌈iters_per_window · exp(−k · max(0, s − exp_decay_from))⌉``.
    - ``random`` (MixGRPO's random, Flow-GRPO-Fast): a start drawn uniformly from lo … hi − w,
      from `window_seed` and the iteration alone, so every rank draws the same window.

    MixGRPO's released code keeps a window that runs past hi as a shorter window and, when the
    start reaches hi, runs one empty window (nothing stochastic, nothing trained) before rolling
    back; here the start rolls back as soon as the window would be empty, and without roll-back it
    stops at the last start that leaves one step.

    With ``flash_ratio`` (MixGRPO-Flash) the ODE steps after the window run DPM-Solver++ (second
    order) on a compressed grid, so a rollout costs fewer forwards; the steps up to the window's
    last keep the sampler's grid.
    """

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Doc("chains per prompt G")] = 12,
        same_latent: Annotated[bool, Doc(
            "one initial noise per prompt (the prefix before the window is computed once), or G")] = True,
        window_size: Annotated[int, Range(ge=1), Doc("SDE steps w in the window")] = 4,
        window_range: Annotated[list[float], Doc(
            "[lo, hi): the steps a window may cover (hi ≤ 0: T + hi; a value between 0 and 1: that fraction of T, "
            "rounded down)")] = [0, -2],  # noqa: B006
        schedule: Annotated[Schedule, Doc("how the window's start moves over the iterations")] = "progressive",
        iters_per_window: Annotated[int, Range(ge=1), Doc("iterations before the window moves")] = 25,
        window_stride: Annotated[int, Range(ge=1), Doc("steps the window moves each time")] = 1,
        roll_back: Annotated[bool, Doc("back to the first start past the range (else stay at the last)")] = True,
        max_iters_per_window: Annotated[int, Range(ge=1), Doc("decay: iterations of the first window")] = 10,
        min_iters_per_window: Annotated[int, Range(ge=1), Doc("decay: iterations of the last window")] = 1,
        exp_decay_from: Annotated[int, Range(ge=0), Doc("exp-decay: the start after which windows shorten")] = 13,
        exp_decay_rate: Annotated[float, Range(ge=0), Doc("exp-decay: rate k")] = 0.1,
        window_seed: Annotated[int, Range(ge=0), Doc("random: seed of the starts")] = 0,
        flash_ratio: Annotated[float, Range(ge=0, lt=1), Doc(
            "MixGRPO-Flash: the ODE steps after the window become flash_solver steps on a grid of "
            "⌊(T − last)·ratio⌋ points (0 = the rollout's solver on the sampler's grid; released 0.4)")] = 0.0,
        flash_solver: Annotated[str, Doc("the registered solver of the compressed tail (released: DPM-Solver++)")
                                ] = "dpm-solver++",
    ) -> None:
        if len(window_range) != 2 or any(not 0 < v < 1 and v != int(v) for v in window_range):
            raise UserError(f"window_range must be [lo, hi) in whole steps or fractions of T between 0 and 1, got "
                            f"{window_range}", where="window_range")
        self.group_size, self.same_latent, self.window_size = group_size, same_latent, window_size
        self.window_range, self.schedule = list(window_range), schedule
        self.iters_per_window, self.window_stride, self.roll_back = iters_per_window, window_stride, roll_back
        self.max_iters, self.min_iters = max_iters_per_window, min_iters_per_window
        self.exp_decay_from, self.exp_decay_rate, self.window_seed = exp_decay_from, exp_decay_rate, window_seed
        self.flash_ratio, self.flash_solver = flash_ratio, flash_solver

    def bounds(self, steps: int) -> tuple[int, int]:
        """(lo, hi) of the window's steps in a tree of `steps` steps."""
        lo, hi = (int(v * steps) if 0 < v < 1 else int(v) for v in self.window_range)
        hi = steps + hi if hi <= 0 else hi
        if not 0 <= lo < hi <= steps:
            raise UserError(f"window_range {self.window_range} leaves no step of sampler.steps = {steps} for the "
                            "window", where="window_range", hint=f"use 0 <= lo < hi <= {steps}")
        if self.schedule == "random" and hi - lo < self.window_size:
            raise UserError(f"a random window of {self.window_size} steps does not fit in steps [{lo}, {hi})",
                            where="window_size", hint=f"use window_size <= {hi - lo}")
        return lo, hi

    def dwell(self, start: int, hi: int) -> int:
        """Iterations the window stays at `start`."""
        if self.schedule == "decay":
            return max(self.min_iters, int(self.max_iters * (1 - start / hi) + self.min_iters * start / hi))
        if self.schedule == "exp-decay":
            return math.ceil(self.iters_per_window * math.exp(-self.exp_decay_rate * max(0, start - self.exp_decay_from)))
        return self.iters_per_window

    def start(self, steps: int, iteration: int) -> int:
        """The window's first step at `iteration`."""
        lo, hi = self.bounds(steps)
        if self.schedule == "fixed":
            return lo
        if self.schedule == "random":
            rng = np.random.default_rng([self.window_seed, iteration])
            return int(rng.integers(lo, hi - self.window_size + 1))
        start, stay = lo, 0
        for _ in range(iteration):  # MixGRPO's state machine, replayed from the first iteration
            stay += 1
            if stay >= max(1, self.dwell(start, hi)):
                stay, start = 0, start + self.window_stride
                if start >= hi:
                    start = lo if self.roll_back else start - self.window_stride
        return start

    def window(self, steps: int, iteration: int) -> range:
        start = self.start(steps, iteration)
        return range(start, min(start + self.window_size, self.bounds(steps)[1]))

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        window = self.window(steps, iteration)
        if window.start == steps - 1 and self.same_latent:
            raise UserError(f"a window that starts at the last step ({steps - 1}) gives {self.group_size} identical "
                            "chains", where="window_range", hint=f"keep the window's steps below {steps - 1}")
        stochastic = tuple(k in window for k in range(steps))
        if not self.same_latent:
            plan = TreePlan((1,) * steps, (1.0,) * steps, stochastic, roots=self.group_size)
        else:
            plan = TreePlan(tuple(self.group_size if k == window.start else 1 for k in range(steps)), (1.0,) * steps,
                            stochastic)
        return compress_tail(plan, self.flash_ratio, self.flash_solver) if self.flash_ratio else plan
