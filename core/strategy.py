"""The Strategy protocol: a named preset of one algorithm's components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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
        split_logprob: ``"nominal"`` evaluates a split edge with τ, ``"scaled"`` with λ·τ.
    """

    topology: TreeTopology
    advantage: AdvantageEstimator
    pruners: list[Pruner] = field(default_factory=list)
    clip_range: float = 1e-4
    sampler: str = "dance-sde"
    split_logprob: str = "nominal"


@runtime_checkable
class Strategy(Protocol):
    """Builds the components of one algorithm from its recipe options (its constructor)."""

    def build(self) -> StrategyParts:
        ...
