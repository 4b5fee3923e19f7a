"""`grpo plan RECIPE`: the exact cost of one iteration before running it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from grpo.core.plan import cost

from .common import console, guard, load_recipe


@guard
def plan(
    recipe: Annotated[str, typer.Argument(help="path of a .toml recipe")],
    set_: Annotated[list[str], typer.Option("--set", help="override KEY=VALUE (TOML value)")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-tree rollout forwards, edges and trained edges (after pruning, iteration 0)."""
    r, _ = load_recipe(recipe, set_, env=False)
    report = cost(r)
    data = report.to_dict()
    prompts = r.train.prompts_per_iteration
    data["trees_per_iteration"] = prompts
    if as_json:
        print(json.dumps(data, indent=2))
        return
    parts = Table(title=f"strategy {r.strategy.name}: its parts")
    for col in ("slot", "part", "options", "chosen by", "provided by"):
        parts.add_column(col)
    for slot, rec in data["parts"].items():
        for i, part in enumerate(rec if isinstance(rec, list) else [rec]):
            options = ", ".join(f"{k}={v}" for k, v in part.items() if k not in ("use", "provided_by", "chosen_by"))
            parts.add_row(f"{slot} {i}" if isinstance(rec, list) else slot, part["use"], options, part["chosen_by"],
                          part["provided_by"])
        if isinstance(rec, list) and not rec:
            parts.add_row(slot, "(none)", "", "", "")
    console.print(parts)
    edges = data["unit"] == "edges"  # an objective of other units trains no edge: its column would mislead
    table = Table(title=f"{r.strategy.name}: one tree over {data['steps']} steps")
    for col in ("step", "σ → σ'", "live nodes", "branch", "mode", *(("trained edges",) if edges else ())):
        table.add_column(col, justify="right")
    for s in data["per_step"]:
        split = f"×{s['branch']} (λ {s['noise_scale']:g})" if s["branch"] > 1 else ""
        table.add_row(str(s["step"]), f"{s['sigma']:.3f} → {s['sigma_next']:.3f}", str(s["live_nodes"]), split,
                      s["mode"], *((str(s["trained_edges"]),) if edges else ()))
    console.print(table)
    leaves, forwards, chains = data["leaves_per_tree"], data["rollout_forwards_per_tree"], data["chain_forwards_per_tree"]
    trained = (f", [bold]{data['trained_edges_per_tree']}[/] trained edges "
               f"({data['trained_edges_per_leaf']:.2f} per leaf)") if edges else ""
    console.print(f"per tree: [bold]{leaves}[/] leaves, [bold]{forwards}[/] rollout forwards "
                  f"({data['rollout_forwards_per_leaf']:.2f} per leaf), {data['edges_per_tree']} edges{trained}; "
                  f"{prompts} trees per iteration")
    if forwards != chains:
        console.print(f"as {leaves} separate chains of {data['steps']} steps: {chains} rollout forwards "
                      f"({data['steps']:.2f} per leaf); this tree takes {forwards / chains:.0%} of them")
    if not edges:
        console.print(f"objective {r.strategy.objective.entry.name}: [bold]{data['units_per_tree']}[/] "
                      f"{data['unit'].replace('_', ' ')} trained per tree")
