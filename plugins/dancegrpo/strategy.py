"""DanceGRPO: G chains per prompt from shared initial noise, group advantages, timestep fraction."""

from __future__ import annotations

from typing import Annotated

from grpo.core.schema import Doc, Range
from grpo.core.strategy import StrategyParts
from grpo.plugins.trees.topologies import Fan

from .advantage import GroupAdvantage
from .pruners import TimestepFraction


class DanceGRPO:
    """DanceGRPO (Xue et al. 2025) as a tree: a root fanning out into G chains."""

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Doc("samples per prompt G")] = 12,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Doc("share of steps trained per chain")] = 0.6,
        ignore_last: Annotated[bool, Doc("never train the last step")] = False,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-4,
        advantage_clamp: Annotated[float, Range(gt=0), Doc("bound on the magnitude of an advantage")] = 5.0,
        step_window: Annotated[list[int], Range(ge=0), Doc("[start, stop) of steps that may be trained; empty = all")] = [],  # noqa: B006
    ) -> None:
        self.step_window = list(step_window)
        self.group_size = group_size
        self.timestep_fraction = timestep_fraction
        self.ignore_last = ignore_last
        self.clip_range = clip_range
        self.advantage_clamp = advantage_clamp

    def build(self) -> StrategyParts:
        pruners = []
        if self.timestep_fraction < 1.0 or self.ignore_last or self.step_window:
            pruners.append(TimestepFraction(fraction=self.timestep_fraction, ignore_last=self.ignore_last,
                                            window=self.step_window))
        return StrategyParts(
            topology=Fan(group_size=self.group_size, noise_scale=1.0),
            advantage=GroupAdvantage(clamp=self.advantage_clamp),
            pruners=pruners,
            clip_range=self.clip_range,
            sampler="dance-sde",
            sampler_defaults={"steps": 16, "shift": 3.0, "eta": 0.3},  # DanceGRPO's FLUX settings
        )
