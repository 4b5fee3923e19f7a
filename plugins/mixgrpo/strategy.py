"""MixGRPO and MixGRPO-Flash: chains from one initial noise, SDE only inside a sliding window, ODE
elsewhere (for Flash, DPM-Solver++ on a compressed grid after the window)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from grpo.core.schema import Doc, Part, Range
from grpo.core.strategy import Make, StrategyParts

Topology, Advantage = Part("topology"), Part("advantage")
Schedule = Literal["fixed", "progressive", "decay", "exp-decay", "random"]  # of the sde-window topology


@dataclass(kw_only=True)
class MixGRPO:
    """MixGRPO (released as Tencent-Hunyuan/MixGRPO) as parts: the ``sde-window`` topology (G chains
    sharing their initial noise and ODE prefix, split at the window's first step; SDE for
    `window_size` steps, ODE after) with the released progressive schedule (the window moves one
    step every 25 iterations over steps 0 … T − 3, rolling back at the end) and the ``group``
    advantage (per-prompt mean and unbiased std, clamp 5, and optionally MixGRPO's trimmed
    statistics). Only the window's steps are trained, each chain's every one.

    The sampler is ``flow-sde`` with η = 0.7 over 25 steps, shift 3, as MixGRPO's released FLUX
    scripts (``--flow_grpo_sampling``). Clip 1e-4. ``flash_ratio`` > 0 is MixGRPO-Flash.
    """

    group_size: Annotated[int, Range(ge=2), Topology, Doc("samples per prompt G")] = 12
    window_size: Annotated[int, Range(ge=1), Topology, Doc("SDE steps in the window")] = 4
    schedule: Annotated[Schedule, Topology, Doc("how the window moves")] = "progressive"
    iters_per_window: Annotated[int, Range(ge=1), Topology, Doc("iterations before it moves")] = 25
    window_stride: Annotated[int, Range(ge=1), Topology, Doc("steps it moves each time")] = 1
    window_range: Annotated[list[int], Topology, Doc("[lo, hi) of window steps (hi ≤ 0: T + hi)")] = field(
        default_factory=lambda: [0, -2])
    flash_ratio: Annotated[float, Range(ge=0, lt=1), Topology, Doc(
        "MixGRPO-Flash: the ODE steps after the window run DPM-Solver++ (second order) on a grid of "
        "⌊(T − last)·ratio⌋ points (0 = Euler on the sampler's grid)")] = 0.0
    trim_lowest: Annotated[float, Range(ge=0, lt=1), Advantage, Doc(
        "share of each group's lowest rewards left out of its mean and std (MixGRPO's trimmed_ratio)")] = 0.0
    advantage_clamp: Annotated[float, Range(gt=0), Advantage, Doc("bound on the magnitude of an advantage")] = 5.0
    clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-4

    def build(self, make: Make) -> StrategyParts:
        return StrategyParts(
            topology=make("topology", "sde-window", group_size=self.group_size, same_latent=True,
                          window_size=self.window_size, window_range=self.window_range, schedule=self.schedule,
                          iters_per_window=self.iters_per_window, window_stride=self.window_stride,
                          flash_ratio=self.flash_ratio),
            advantage=make("advantage", "group", advantage_clamp=self.advantage_clamp, trim_lowest=self.trim_lowest),
            clip_range=self.clip_range,
            sampler="flow-sde",
            sampler_defaults={"steps": 25, "shift": 3.0, "noise_level": 0.7},
        )


@dataclass(kw_only=True)
class MixGRPOFlash(MixGRPO):
    """MixGRPO-Flash as released: MixGRPO with the ODE steps after the window run by second-order
    DPM-Solver++ (midpoint) on a grid compressed by 0.4, and the window moving every 20 iterations.
    At T = 25 and a window at steps 0-3, a chain costs 11 forwards instead of 25."""

    iters_per_window: Annotated[int, Range(ge=1), Topology, Doc("iterations before it moves")] = 20
    flash_ratio: Annotated[float, Range(gt=0, lt=1), Topology, Doc(
        "the ODE steps after the window run DPM-Solver++ on a grid of ⌊(T − last)·ratio⌋ points")] = 0.4
