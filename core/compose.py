"""A recipe's ``[strategy]`` table resolved over the strategy's preset: every part that will run, with
its complete options and the recipe path of each.

The rules, for each single slot (``topology``, ``advantage``, ``objective``, ``solver``):

- ``[strategy.SLOT]`` without ``use`` changes the preset's part key by key;
- with ``use`` naming another part, it replaces the preset's (that part's own defaults fill the
  rest); naming the preset's own part keeps the preset's options under the table's.

For ``[[strategy.pruner]]``: tables that all name a pruner replace the preset's list (``pruner =
[]``: none); tables that name none change the preset's pruners key by key, by position.

A top-level key of ``[strategy]`` other than ``use`` is short for an option of the parts: it sets
that option on every part of the strategy that declares it (``strategy.split_points`` is the
topology's ``split_points``). Options are declared once, on their part; a strategy has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import PartSpec, StrategySpec
from .errors import UserError, UserErrors, closest
from .registry import Entry, Registry
from .schema import RENAMED, unknown_key, validate
from .strategy import SINGLE_SLOTS, SLOTS, Part, Preset

# [strategy] keys of earlier versions that now live elsewhere, with where to write them
MOVED = {
    "global_std": 'the advantage\'s own option: [strategy.advantage] std = "global" (or "group")',
    "sde_window_size": 'Flow-GRPO-Fast is a strategy of its own: [strategy] use = "flow-grpo-fast" and window_size',
    "sde_window_range": 'Flow-GRPO-Fast is a strategy of its own: [strategy] use = "flow-grpo-fast" and window_range',
    "train_last_step": 'the last-step pruner: replace the pruners with [[strategy.pruner]] tables ending in '
                       'use = "last-step", or prune the last depth with pruned_depths',
}


@dataclass
class _Choice:
    """A part being resolved: its entry, its options so far and where each came from."""

    entry: Entry
    options: dict[str, Any]
    where: str
    chosen_by: str
    explicit: set[str] = field(default_factory=set)  # keys its own table set
    origins: dict[str, str] = field(default_factory=dict)


def _part_entry(registry: Registry, kind: str, name: str, where: str, strategy: Entry) -> Entry:
    """The entry of a part the preset names: a user error when no installed plugin registers it."""
    if name not in registry.entries[kind]:
        raise UserError(f"strategy {strategy.name!r} ({strategy.distribution}) uses the {kind} {name!r}, which no "
                        "installed plugin registers", where=where,
                        hint=f"install the plugin that provides it, or replace the part: [{where}] use = ...")
    return registry.entries[kind][name]


def _preset_choice(registry: Registry, kind: str, part: Part, where: str, strategy: Entry) -> _Choice:
    entry = _part_entry(registry, kind, part.name, where, strategy)
    declared = {o.name for o in entry.options}
    stray = sorted(set(part.options) - declared)
    if stray:
        raise UserError(f"strategy {strategy.name!r} ({strategy.distribution}) gives its {kind} {part.name!r} the "
                        f"option {stray[0]!r}, which that part does not take", where=where,
                        hint="a fault of the strategy's plugin: report it, or replace the part")
    return _Choice(entry, dict(part.options), where, "strategy")


def _table_choice(registry: Registry, kind: str, base: Part | None, table: Any, where: str,
                  strategy: Entry) -> _Choice:
    """The part of `table` (``use`` optional) over the preset's `base` part."""
    if not isinstance(table, dict):
        raise UserError(f"expected a table, got {table!r}", where=where)
    own = {k: v for k, v in table.items() if k != "use"}
    if "use" in table:
        entry = registry.get(kind, table["use"], where=f"{where}.use")
        keep = base is not None and table["use"] == base.name
        choice = _Choice(entry, dict(base.options) if keep and base else {}, where, where)
    elif base is None:
        raise UserError(f"missing key 'use' (which {kind})", where=where,
                        hint="valid: " + ", ".join(registry.names(kind)))
    else:
        choice = _preset_choice(registry, kind, base, where, strategy)
    choice.options.update(own)
    choice.explicit = set(own)
    choice.origins = {k: f"{where}.{k}" for k in own}
    return choice


def _pruner_choices(registry: Registry, preset: Preset, table: Any, strategy: Entry,
                    errors: list[UserError]) -> list[_Choice]:
    base = list(preset.pruners)
    if table is None:
        return [_preset_choice(registry, "pruner", p, f"strategy.pruner.{i}", strategy) for i, p in enumerate(base)]
    items = [table] if isinstance(table, dict) else table
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise UserError(f"expected a list of pruner tables, got {table!r}", where="strategy.pruner",
                        hint="write [[strategy.pruner]] tables, or pruner = [] for no pruning")
    named = [("use" in t) for t in items]
    if any(named) and not all(named):
        raise UserError("some [[strategy.pruner]] tables name a pruner and some do not", where="strategy.pruner",
                        hint="name every pruner with use (they replace the strategy's list), or none (they change "
                             "the strategy's pruners in order)")
    if not all(named) and len(items) > len(base):
        names = ", ".join(p.name for p in base) or "none"
        raise UserError(f"strategy {strategy.name!r} has {len(base)} pruner(s) ({names}); a table without use changes "
                        "the one at its position", where=f"strategy.pruner.{len(base)}",
                        hint="name the pruner with use = ... to replace the strategy's list")
    out = []
    for i in range(len(items) if all(named) else len(base)):
        where, part = f"strategy.pruner.{i}", base[i] if i < len(base) else None
        try:
            out.append(_table_choice(registry, "pruner", part, items[i] if i < len(items) else {}, where, strategy))
        except UserError as e:
            errors.append(e)
    return out


def _short_keys(short: Mapping[str, Any], choices: list[_Choice], replaced: dict[str, set[str]], strategy: Entry,
                errors: list[UserError], unresolved: bool = False) -> None:
    """Each short key onto every chosen part that declares it. `replaced`: for each slot the recipe
    replaced, the options of the preset's part there (a short key meant for it is refused by name).
    With `unresolved` (a slot whose part could not be chosen, already reported), a key no chosen part
    takes is not reported again: it may be that part's."""
    declared = {c.where: {o.name for o in c.entry.options} for c in choices}
    accepted = sorted({o for names in declared.values() for o in names})
    for key, value in short.items():
        path = f"strategy.{key}"
        owners = [c for c in choices if key in declared[c.where]]
        if not owners and key in MOVED:
            errors.append(UserError(f"{key!r} is no longer a strategy option", where=path, hint=f"use {MOVED[key]}"))
        elif not owners and not unresolved:
            errors.append(_no_owner(key, path, accepted, replaced, strategy))
        for owner in owners:
            if key in owner.explicit:
                errors.append(UserError(f"set twice: here and in [{owner.where}]", where=path,
                                        hint=f"keep one of strategy.{key} and {owner.where}.{key}"))
                continue
            owner.options[key] = value
            owner.origins[key] = path


def _no_owner(key: str, path: str, accepted: list[str], replaced: dict[str, set[str]], strategy: Entry) -> UserError:
    """The error of a short key no part takes: one meant for a part the recipe replaced, a renamed
    option, or the closest option of the parts."""
    for slot, options in replaced.items():
        if key in options:
            table = "[[strategy.pruner]]" if slot == "pruner" else f"[strategy.{slot}]"
            return UserError(f"configures the {slot} of strategy {strategy.name!r}, which {table} replaces",
                             where=path, hint=f"remove strategy.{key}, or give the part's own options in {table}")
    if key in RENAMED or closest(key, accepted) is not None:
        return unknown_key(key, accepted, path)
    return UserError(f"no part of strategy {strategy.name!r} takes {key!r}", where=path,
                     hint=f"its parts' options: {', '.join(accepted)} (grpo plugins show {strategy.name})")


def _replaced(registry: Registry, preset: Preset, choices: dict[str, _Choice], pruners: list[_Choice],
              table: Mapping[str, Any]) -> dict[str, set[str]]:
    """For each slot whose preset part the recipe replaced, that part's options."""
    def options(kind: str, part: Part) -> set[str]:
        entry = registry.entries[kind].get(part.name)
        return {o.name for o in entry.options} if entry is not None else set(part.options)

    out = {slot: options(slot, preset.part(slot)) for slot, c in choices.items()
           if c.chosen_by != "strategy" and c.entry.name != preset.part(slot).name}
    if "pruner" in table and pruners and pruners[0].chosen_by != "strategy" or table.get("pruner") == []:
        out["pruner"] = set().union(*(options("pruner", p) for p in preset.pruners))
    return out


def _spec(choice: _Choice, errors: list[UserError]) -> PartSpec | None:
    try:
        options = validate(choice.entry.factory, choice.options, choice.where, paths=choice.origins)
    except UserErrors as e:
        errors.extend(e.errors)
        return None
    return PartSpec(choice.entry, options, choice.where, choice.chosen_by, dict(choice.origins))


def resolve_strategy(registry: Registry, table: Any, errors: list[UserError]) -> tuple[StrategySpec | None,
                                                                                      Preset | None]:
    """``[strategy]`` over its preset: the spec of every part (None where the table has errors, which
    are appended to `errors`), and the preset (None when the strategy is unknown)."""
    if not isinstance(table, dict):
        errors.append(UserError(f"expected a table, got {table!r}", where="strategy"))
        return None, None
    if "use" not in table:
        errors.append(UserError("missing key 'use' (which strategy)", where="strategy",
                                hint="valid: " + ", ".join(registry.names("strategy"))))
        return None, None
    try:
        entry = registry.get("strategy", table["use"], where="strategy.use")
    except UserError as e:
        errors.append(e)
        return None, None
    preset: Preset = entry.factory
    choices: dict[str, _Choice] = {}
    before = len(errors)
    for slot in SINGLE_SLOTS:
        try:
            choices[slot] = _table_choice(registry, slot, preset.part(slot), table.get(slot, {}), f"strategy.{slot}",
                                          entry)
        except UserError as e:
            errors.append(e)
    try:
        pruners = _pruner_choices(registry, preset, table.get("pruner"), entry, errors)
    except UserError as e:
        errors.append(e)
        pruners = []
    short = {k: v for k, v in table.items() if k not in ("use", *SLOTS)}
    replaced = _replaced(registry, preset, choices, pruners, table)
    _short_keys(short, [*choices.values(), *pruners], replaced, entry, errors, unresolved=len(errors) > before)
    specs = {slot: _spec(c, errors) for slot, c in choices.items()}
    pruner_specs = [_spec(c, errors) for c in pruners]
    if len(specs) < len(SINGLE_SLOTS) or None in specs.values() or None in pruner_specs:
        return None, preset
    return StrategySpec(entry, specs["topology"], specs["advantage"], specs["objective"], specs["solver"],
                        tuple(pruner_specs)), preset
