"""A strategy that composes built-in parts (the fan tree, the timestep fraction) with this
plugin's own, all by registered name."""

from typing import Annotated

from grpo.core.schema import Doc, Part, Range
from grpo.core.strategy import Make, StrategyParts


class RankGRPO:
    """DanceGRPO's fan of G chains with rank advantages, training the highest-|advantage| edges."""

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Part("topology"), Doc("chains per prompt")] = 8,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Part("pruner"),
                                     Doc("share of steps that may be trained")] = 0.6,
        keep: Annotated[float, Range(gt=0, le=1), Part("pruner"), Doc("share of those edges kept, by |advantage|")] = 0.5,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-3,
    ) -> None:
        self.group_size, self.timestep_fraction, self.keep, self.clip_range = group_size, timestep_fraction, keep, clip_range

    def build(self, make: Make) -> StrategyParts:
        return StrategyParts(
            topology=make("topology", "fan", group_size=self.group_size, noise_scale=1.0),
            advantage=make("advantage", "rank"),
            pruners=[make("pruner", "timestep-fraction", timestep_fraction=self.timestep_fraction),
                     make("pruner", "top-advantage", keep=self.keep)],
            clip_range=self.clip_range,
            sampler="dance-sde",
            sampler_defaults={"steps": 16, "shift": 1.0, "eta": 0.5},
        )
