"""`grpo plugins list|show|new`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from grpo.core.errors import UserError, unknown_name_hint
from grpo.core.registry import load_registry
from grpo.core.schema import _MISSING

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


@app.command("show")
@guard
def show(name: Annotated[str, typer.Argument(help="a component name, e.g. dancegrpo")]) -> None:
    """A component's description and its recipe options with types and defaults."""
    registry = load_registry()
    found = registry.find(name)
    if not found:
        raise UserError(f"no plugin named {name!r}", hint=unknown_name_hint(name, {e.name for e in registry.all()}))
    for e in found:
        console.print(f"[bold]{escape(e.name)}[/] ({e.kind}, from {escape(e.distribution)})")
        console.print(escape(e.description))
        table = Table()
        for col in ("option", "type", "default", "range", "description"):
            table.add_column(col)
        for o in e.options:
            default = _default(o.default)
            table.add_row(o.name, escape(o.type_name), escape("(required)" if default is None else default),
                          o.range.describe() if o.range else "", escape(o.doc))
        console.print(table)
        for key, source in getattr(e.factory, "sources", {}).items():
            console.print(f"where to get [bold]{escape(key)}[/]: {escape(source)}")


@app.command("new")
@guard
def new(
    kind: Annotated[str, typer.Argument(help="reward, pruner, advantage, strategy, topology or sampler")],
    name: Annotated[str, typer.Argument(help="the component's name in recipes, e.g. my-reward")],
    out: Annotated[Path | None, typer.Option("--out", help="folder to create (default grpo-NAME)")] = None,
) -> None:
    """Write a ready-to-install plugin package with a working component and a passing test."""
    folder = scaffold(kind, name, out)
    console.print(f"[green]written[/]: {folder}\n  next: pip install -e {folder} && (cd {folder} && python -m pytest)")
