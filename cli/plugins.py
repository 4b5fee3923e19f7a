"""`grpo plugins list|show|new`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from grpo.core.errors import UserError, unknown_name_hint
from grpo.core.registry import Entry, load_registry
from grpo.core.schema import _MISSING
from grpo.core.strategy import Preset

from .common import console, guard
from .scaffold import scaffold

app = typer.Typer(help="List and describe the registered plugins.", no_args_is_help=True)


def _default(value) -> str | None:
    return None if value is _MISSING else repr(value)


@app.command("list")
@guard
def list_(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Every registered component, by kind, with the plugin and distribution that provided it."""
    registry = load_registry()
    entries = list(registry.all())
    if as_json:
        print(json.dumps([{"kind": e.kind, "name": e.name, "description": e.description, "plugin": e.plugin,
                           "distribution": e.distribution} for e in entries], indent=2))
        return
    table = Table(title="grpo plugins")
    for col in ("kind", "name", "description", "from"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.kind, e.name, escape(e.description), escape(e.distribution))
    console.print(table)


# where a component of each kind is chosen in a recipe
TABLES = {"model": "[model]", "sampler": "[sampler]", "solver": "[strategy.solver] or [eval] solver",
          "topology": "[strategy.topology]", "reward": "[[reward]]", "advantage": "[strategy.advantage]",
          "pruner": "[[strategy.pruner]]", "objective": "[strategy.objective]", "backend": "[backend]",
          "strategy": "[strategy]", "prompts": "[prompts]"}


def _options_table(entry: Entry, given: dict | None = None) -> Table:
    """An entry's options; with `given`, a column of the values a preset gives them."""
    table = Table()
    cols = ("option", "type", *(("preset",) if given is not None else ()), "default", "range", "description")
    for col in cols:
        table.add_column(col)
    for o in entry.options:
        default = _default(o.default)
        preset = (escape(repr(given[o.name])) if o.name in given else "",) if given is not None else ()
        table.add_row(o.name, escape(o.type_name), *preset, escape("(required)" if default is None else default),
                      o.range.describe() if o.range else "", escape(o.doc))
    return table


def _show_preset(registry, entry: Entry) -> None:
    """A strategy: every part of its preset with every option, and what the preset gives each."""
    preset: Preset = entry.factory
    console.print(escape("Every option is its part's. Change one in the part's table (e.g. [strategy.topology] "
                         "split_points = [0, 4]) or with the short key in [strategy] (strategy.split_points), which "
                         "sets it on every part that takes it; replace a part with use = NAME in its table."))
    parts = [(f"strategy.{slot}", slot, preset.part(slot)) for slot in ("topology", "advantage")]
    parts += [(f"strategy.pruner.{i}", "pruner", p) for i, p in enumerate(preset.pruners)]
    parts += [(f"strategy.{slot}", slot, preset.part(slot)) for slot in ("objective", "solver")]
    parts += [("sampler", "sampler", preset.sampler)]
    if not preset.pruners:
        console.print("[bold]strategy.pruner[/]: none (every stochastic edge is trained)")
    for table, kind, part in parts:
        found = registry.entries[kind].get(part.name)
        console.print(f"[bold]{table}[/]: {kind} [bold]{escape(part.name)}[/]"
                      + (f" (from {escape(found.distribution)})" if found else " (not registered here)"))
        if found is not None and found.options:
            console.print(_options_table(found, dict(part.options)))
    if preset.train:
        console.print(escape("[train] defaults: " + ", ".join(f"{k} = {v!r}" for k, v in preset.train.items())))


@app.command("show")
@guard
def show(name: Annotated[str, typer.Argument(help="a component name, e.g. dancegrpo")]) -> None:
    """A component's description and its recipe options with types and defaults; for a strategy, every
    part of its preset with every option and the value the preset gives it."""
    registry = load_registry()
    found = registry.find(name)
    if not found:
        raise UserError(f"no plugin named {name!r}", hint=unknown_name_hint(name, {e.name for e in registry.all()}))
    for e in found:
        console.print(f"[bold]{escape(e.name)}[/] ({e.kind}, from {escape(e.distribution)}; chosen in "
                      f"{escape(TABLES[e.kind])})")
        console.print(escape(e.description))
        if isinstance(e.factory, Preset):
            _show_preset(registry, e)
            continue
        if e.options:
            console.print(_options_table(e))
        else:
            console.print("no options")
        for key, source in e.sources.items():
            console.print(f"where to get [bold]{escape(key)}[/]: {escape(source)}")


@app.command("new")
@guard
def new(
    kind: Annotated[str, typer.Argument(help="reward, pruner, advantage, objective, solver, strategy, topology or "
                                             "sampler")],
    name: Annotated[str, typer.Argument(help="the component's name in recipes, e.g. my-reward")],
    out: Annotated[Path | None, typer.Option("--out", help="folder to create (default grpo-NAME)")] = None,
) -> None:
    """Write a ready-to-install plugin package with a working component and a passing test."""
    folder = scaffold(kind, name, out)
    console.print(f"[green]written[/]: {folder}\n  next: pip install -e {folder} && (cd {folder} && python -m pytest)")
