"""The Strategy protocol: a named preset of one algorithm's components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .advantage import AdvantageEstimator
from .pruner import Pruner
from .topology import TreeTopology


@dataclass
class StrategyParts:
    """What a strategy chooses.

    Attributes:
        topology: the rollout tree shape.
        advantage: how leaf rewards become per-edge advantages.
        pruners: applied in order to the stochastic edges to choose the trained ones.
        clip_range: ε of the clipped ratio objective.
        sampler: the default sampler name (a recipe's ``[sampler] use`` overrides it).
        sampler_defaults: options of that sampler as the paper ran it (steps, shift, noise
            level); a recipe's ``[sampler]`` keys override each of them.
        split_logprob: ``"nominal"`` evaluates a split edge with τ, ``"scaled"`` with λ·τ.
    """

    topology: TreeTopology
    advantage: AdvantageEstimator
    pruners: list[Pruner] = field(default_factory=list)
    clip_range: float = 1e-4
    sampler: str = "dance-sde"
    sampler_defaults: dict[str, Any] = field(default_factory=dict)
    split_logprob: str = "nominal"


@runtime_checkable
class Strategy(Protocol):
    """Builds the components of one algorithm from its recipe options (its constructor)."""

    def build(self) -> StrategyParts:
        ...
