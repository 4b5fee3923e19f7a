"""DanceGRPO: G chains per prompt from shared initial noise, group advantages, timestep fraction."""

from __future__ import annotations

from typing import Annotated, Literal

from grpo.core.schema import Doc, Part, Range
from grpo.core.strategy import Make, StrategyParts

Topology, Advantage, Pruner = Part("topology"), Part("advantage"), Part("pruner")


class DanceGRPO:
    """DanceGRPO (Xue et al. 2025) as a tree: the ``fan`` topology (a root fanning out into G
    chains), the ``group`` advantage and the ``timestep-fraction`` pruner."""

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Topology, Doc("samples per prompt G")] = 12,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Pruner, Doc("share of steps trained per chain")] = 0.6,
        ignore_last: Annotated[bool, Pruner, Doc("never train the last step")] = False,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-4,
        advantage_clamp: Annotated[float, Range(gt=0), Advantage, Doc("bound on the magnitude of an advantage")] = 5.0,
        step_window: Annotated[list[int], Range(ge=0), Pruner,
                               Doc("[start, stop) of steps that may be trained; empty = all")] = [],  # noqa: B006
        step_rounding: Annotated[Literal["up", "down"], Pruner, Doc(
            "⌈f·T⌉ steps trained per chain, or ⌊f·candidates⌋ as DanceGRPO's released trainer")] = "up",
    ) -> None:
        self.step_rounding = step_rounding
        self.step_window = list(step_window)
        self.group_size = group_size
        self.timestep_fraction = timestep_fraction
        self.ignore_last = ignore_last
        self.clip_range = clip_range
        self.advantage_clamp = advantage_clamp

    def build(self, make: Make) -> StrategyParts:
        pruners = []
        if self.timestep_fraction < 1.0 or self.ignore_last or self.step_window:
            pruners.append(make("pruner", "timestep-fraction", timestep_fraction=self.timestep_fraction,
                                ignore_last=self.ignore_last, step_window=self.step_window,
                                step_rounding=self.step_rounding))
        return StrategyParts(
            topology=make("topology", "fan", group_size=self.group_size, noise_scale=1.0),
            advantage=make("advantage", "group", advantage_clamp=self.advantage_clamp),
            pruners=pruners,
            clip_range=self.clip_range,
            sampler="dance-sde",
            sampler_defaults={"steps": 16, "shift": 3.0, "eta": 0.3},  # DanceGRPO's FLUX settings
        )
