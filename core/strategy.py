"""Strategies are presets: one algorithm as its parts, each a registered name with the options its
paper gives it.

A strategy has no code and declares no option of its own. Its parts fill five slots —
``topology``, ``advantage``, ``pruner`` (an ordered list), ``objective`` and ``solver`` — and it
names the sampler and the ``[train]`` settings of its paper. Every option stays declared once, on
the part that takes it; a recipe changes a part's options key by key (``[strategy.topology]
split_points = [0, 4, 8]``, or the short ``strategy.split_points``), or replaces the part by naming
another (``[strategy.topology] use = "chains"``). A named variant (``mixgrpo-flash``) is a preset
derived from another with ``Preset.derive``, not a subclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

SLOTS = ("topology", "advantage", "pruner", "objective", "solver")
SINGLE_SLOTS = ("topology", "advantage", "objective", "solver")


@dataclass(frozen=True, init=False)
class Part:
    """A part of a preset: a registered name and the options the preset gives it (the part's own
    defaults fill the rest). ``Part("fan", group_size=12)``."""

    name: str
    options: Mapping[str, Any]

    def __init__(self, name: str, /, **options: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))

    def with_options(self, **options: Any) -> Part:
        """The same part with `options` changed key by key."""
        return Part(self.name, **{**self.options, **options})

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Part({self.name!r}{args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Part) and (self.name, dict(self.options)) == (other.name, dict(other.options))

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.options))))


@dataclass(frozen=True)
class Preset:
    """A strategy: the parts of one algorithm and the settings of its paper.

    Attributes:
        topology: the rollout tree (``grpo.core.topology.TreeTopology``).
        advantage: leaf rewards to per-edge advantages (``grpo.core.advantage.AdvantageEstimator``).
        objective: the learning rule (``grpo.core.objective.Objective``).
        pruners: applied in order to the stochastic edges to choose the trained ones.
        solver: the deterministic solver of the rollout's ODE steps (``grpo.core.solver.Solver``).
        sampler: the default sampler and its options as the paper ran it; a recipe's ``[sampler]``
            keys override them, and naming another sampler drops them.
        train: ``[train]`` defaults of the paper (an EMA, say); a recipe's ``[train]`` keys override them.
        description: one paragraph for ``grpo plugins list`` and ``show``.
    """

    topology: Part
    advantage: Part
    objective: Part
    pruners: tuple[Part, ...] = ()
    solver: Part = Part("euler")
    sampler: Part = Part("dance-sde")
    train: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pruners", tuple(self.pruners))
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))
        for slot in (*SINGLE_SLOTS, "sampler"):
            if not isinstance(part_of(self, slot), Part):
                raise TypeError(f"Preset.{slot} must be a Part, e.g. Part('fan', group_size=8)")
        if not all(isinstance(p, Part) for p in self.pruners):
            raise TypeError("Preset.pruners must be Parts")

    def part(self, slot: str) -> Part:
        """The preset's part of a single slot (``topology``, ``advantage``, ``objective``, ``solver``)."""
        return part_of(self, slot)

    def derive(self, *, description: str | None = None, pruners: tuple[Part, ...] | None = None,
               train: Mapping[str, Any] | None = None, **parts: Mapping[str, Any] | Part) -> Preset:
        """A variant: for each named slot (or ``sampler``), a Part replaces the preset's part and a
        mapping changes its options key by key; `pruners` replaces the list; `train` updates the
        ``[train]`` defaults key by key."""
        changes: dict[str, Any] = {}
        for slot, change in parts.items():
            if slot not in (*SINGLE_SLOTS, "sampler"):
                raise TypeError(f"derive() got an unknown slot {slot!r}")
            changes[slot] = change if isinstance(change, Part) else part_of(self, slot).with_options(**change)
        if pruners is not None:
            changes["pruners"] = tuple(pruners)
        if train is not None:
            changes["train"] = {**self.train, **train}
        if description is not None:
            changes["description"] = description
        return replace(self, **changes)


def part_of(preset: Preset, slot: str) -> Part:
    """The preset's part of `slot` (a single slot or ``sampler``)."""
    return {"topology": preset.topology, "advantage": preset.advantage, "objective": preset.objective,
            "solver": preset.solver, "sampler": preset.sampler}[slot]
