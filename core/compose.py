"""A strategy's parts by name: ``make`` for strategies, and the recipe's slots applied over them.

``compose`` builds a strategy once with a recording ``make``, then replaces each slot the recipe
names (``[strategy.topology]``, ``[strategy.advantage]``, ``[[strategy.pruner]]``) with the part
given there. The result knows, for every part that will run, its registered name, its complete
options and the distribution that provided it (``recipe.resolved.toml`` and ``grpo plan`` show it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import PluginError, UserErrors
from .pruner import PruneContext
from .registry import Entry, Registry, attributed, instantiate, load_registry
from .schema import component_table, validate
from .strategy import SLOTS, StrategyParts
from .tree import Advantages, EdgeSet, Rollout

if TYPE_CHECKING:
    from .recipe import Component


@dataclass(frozen=True)
class PartRecord:
    """One part as it runs: its kind and registered name, every option, who provided it, and which
    recipe table chose it (``strategy`` for a strategy's default part)."""

    kind: str
    name: str
    options: dict[str, Any]
    distribution: str
    chosen_by: str
    plugin: str = ""

    @classmethod
    def of(cls, component: Component) -> PartRecord:
        """The record of a part a recipe table chose."""
        entry = component.entry
        return cls(entry.kind, entry.name, component.options, entry.distribution, component.where, entry.plugin)

    def to_dict(self) -> dict[str, Any]:
        return {**component_table(self.name, self.options), "provided_by": self.distribution,
                "chosen_by": self.chosen_by}


class PartMaker:
    """The ``make(kind, name, **options)`` handed to a strategy's ``build``: creates a registered
    part with validated options and remembers what it made."""

    def __init__(self, registry: Registry, owner: Entry | None = None) -> None:
        self.registry, self.owner = registry, owner
        self.made: dict[int, PartRecord] = {}

    def __call__(self, kind: str, name: str, **options: Any) -> Any:
        if kind not in SLOTS:
            raise PluginError(f"{self._who()} asked make() for a {kind!r}; parts are one of {', '.join(SLOTS)}")
        table = self.registry.entries[kind]
        if name not in table:
            raise PluginError(f"{self._who()} asked make() for the unknown {kind} {name!r}; registered: "
                              f"{', '.join(sorted(table)) or '(none)'}")
        entry = table[name]
        where = f"strategy (default {kind} {name!r})"
        kwargs = validate(entry.factory, options, where)
        part = instantiate(entry, kwargs, where)
        self.made[id(part)] = PartRecord(kind, name, kwargs, entry.distribution, "strategy", entry.plugin)
        return part

    def _who(self) -> str:
        return f"strategy {self.owner.name!r} ({self.owner.distribution})" if self.owner else "a strategy"


@functools.cache
def _registry() -> Registry:
    return load_registry()


def default_make() -> PartMaker:
    """A ``make`` over every registered part (built-in and installed plugins, as ``grpo run`` finds
    them), to build a strategy outside a recipe: ``BranchGRPO().build(default_make())``."""
    return PartMaker(_registry())


@dataclass
class Slots:
    """The parts a recipe names in ``[strategy]``: None where it keeps the strategy's own."""

    topology: Component | None = None
    advantage: Component | None = None
    pruner: list[Component] | None = None

    def replaced(self) -> list[str]:
        return [s for s in SLOTS if getattr(self, s) is not None]


@dataclass
class Composition:
    """The strategy instance and the parts that will run, each with its record."""

    strategy: Any
    parts: StrategyParts
    records: dict[str, Any] = field(default_factory=dict)

    def prune(self, rollout: Rollout, advantages: Advantages, ctx: PruneContext) -> EdgeSet:
        """The trained edges: every stochastic edge, narrowed by each pruner in order (a failure
        inside one names its plugin)."""
        edges = EdgeSet.all_stochastic(rollout)
        for pruner, record in zip(self.parts.pruners, self.records["pruner"], strict=True):
            with attributed(record, "pruning"):
                edges = pruner(rollout, advantages, edges, ctx)
        return edges

    def to_dict(self) -> dict[str, Any]:
        """``[parts]`` of ``recipe.resolved.toml``: every part that runs, in slot order."""
        out: dict[str, Any] = {}
        for slot in SLOTS:
            rec = self.records[slot]
            out[slot] = [r.to_dict() for r in rec] if isinstance(rec, list) else rec.to_dict()
        return out


def _record(made: dict[int, PartRecord], part: Any, kind: str, owner: Entry) -> PartRecord:
    """What a strategy made with ``make``; a part it constructed itself is recorded by its class,
    as the strategy's plugin's."""
    found = made.get(id(part))
    if found is not None:
        return found
    cls = type(part)
    return PartRecord(kind, f"{cls.__module__}.{cls.__qualname__}", {}, owner.distribution, "strategy", owner.plugin)


def compose(strategy: Component, slots: Slots, registry: Registry) -> Composition:
    """Build `strategy` once and apply the recipe's `slots` over its parts."""
    instance = strategy.create()
    maker = PartMaker(registry, strategy.entry)
    with attributed(strategy.entry, "build()"):
        parts = instance.build(maker)
    if not isinstance(parts, StrategyParts):
        raise PluginError(f"strategy {strategy.entry.name!r} ({strategy.entry.distribution}): build() returned "
                          f"{type(parts).__name__}, not StrategyParts")
    records: dict[str, Any] = {
        "topology": _record(maker.made, parts.topology, "topology", strategy.entry),
        "advantage": _record(maker.made, parts.advantage, "advantage", strategy.entry),
        "pruner": [_record(maker.made, p, "pruner", strategy.entry) for p in parts.pruners],
    }
    chosen: dict[str, Any] = {}
    for slot in ("topology", "advantage"):
        comp = getattr(slots, slot)
        if comp is not None:
            chosen[slot], records[slot] = comp.create(), PartRecord.of(comp)
    if slots.pruner is not None:
        chosen["pruners"] = [c.create() for c in slots.pruner]
        records["pruner"] = [PartRecord.of(c) for c in slots.pruner]
    return Composition(instance, replace(parts, **chosen), records)


def check_replaced_options(strategy: Component, table: dict[str, Any], slots: Slots) -> None:
    """A strategy option that configures only a slot's default part is an error when the recipe
    replaces that slot: it would be silently ignored."""
    from .errors import UserError

    replaced = slots.replaced()
    errors = []
    for opt in strategy.entry.options:
        if opt.part in replaced and opt.name in table:
            slot_key = f"[[strategy.{opt.part}]]" if opt.part == "pruner" else f"[strategy.{opt.part}]"
            errors.append(UserError(
                f"configures the default {opt.part} of {strategy.entry.name!r}, which {slot_key} replaces",
                where=f"strategy.{opt.name}",
                hint=f"remove strategy.{opt.name}, or give the part's own options in {slot_key}"))
    if errors:
        raise UserErrors(errors)
