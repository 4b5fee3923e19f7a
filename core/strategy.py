"""The Strategy protocol: one algorithm as a composition of registered parts in named slots.

A strategy fills three slots — ``topology`` (one), ``advantage`` (one) and ``pruner`` (an ordered
list) — and sets the loss and sampler settings of its paper. It creates every part by kind and
registered name with ``make(kind, name, **options)``, never by importing another plugin's code, so
that a recipe can replace any slot with any registered part (``[strategy.topology]``,
``[strategy.advantage]``, ``[[strategy.pruner]]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .advantage import AdvantageEstimator
from .pruner import Pruner
from .topology import TreeTopology

SLOTS = ("topology", "advantage", "pruner")


@dataclass
class StrategyParts:
    """What a strategy composes.

    Attributes:
        topology: the rollout tree shape (slot ``topology``).
        advantage: how leaf rewards become per-edge advantages (slot ``advantage``).
        pruners: applied in order to the stochastic edges to choose the trained ones (slot ``pruner``).
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


class Make(Protocol):
    """Creates a registered part: ``make("pruner", "depth", pruned_depths=[9, 10])``.

    `kind` is ``"topology"``, ``"advantage"`` or ``"pruner"``; `name` a registered name of that
    kind; the options are validated against the part's constructor as a recipe table would be.
    """

    def __call__(self, kind: str, name: str, **options: Any) -> Any:
        ...


@runtime_checkable
class Strategy(Protocol):
    """Builds the parts of one algorithm from its recipe options (its constructor).

    A constructor option that only configures a default part is marked with the slot it feeds,
    ``Annotated[..., Part("pruner")]``: a recipe that replaces that slot may not set it.
    """

    def build(self, make: Make) -> StrategyParts:
        ...
