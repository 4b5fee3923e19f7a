"""`grpo validate RECIPE`: check structure and values without reading weights or environment."""

from __future__ import annotations

from typing import Annotated

import typer

from grpo.core.components import build_parts

from .common import console, guard, load_recipe


@guard
def validate(
    recipe: Annotated[str, typer.Argument(help="path of a .toml recipe")],
    set_: Annotated[list[str], typer.Option("--set", help="override KEY=VALUE (TOML value)")] = [],  # noqa: B006
) -> None:
    """Check a recipe's tables, keys and values (no weights are read, ${VAR} need not be set)."""
    r, _ = load_recipe(recipe, set_, env=False)
    build_parts(r)  # the parts against each other: the tree, the sampler, the objective, the pruners
    rewards = ", ".join(f"{x.label}×{x.weight:g}" for x in r.rewards)
    s = r.strategy
    parts = ", ".join(f"{p.entry.kind} {p.entry.name}" for p in (s.topology, s.advantage, *s.pruners, s.objective))
    console.print(
        f"[green]ok[/] {recipe}: model {r.model.entry.name}, strategy {s.name} ({parts}), "
        f"sampler {r.sampler.entry.name}, rewards {rewards}, backend {r.backend.entry.name}"
    )
