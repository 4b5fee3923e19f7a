"""Shared CLI helpers: loading recipes and turning user errors into exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from grpo.core.config import Recipe
from grpo.core.errors import PluginError, UserError
from grpo.core.recipe import apply_overrides, expand_env, load_toml, parse, plugin_modules, upgrade_resolved
from grpo.core.registry import Registry, load_registry
from grpo.core.tomlfile import nested_too_deeply

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False, soft_wrap=True)

EXIT_USER_ERROR = 2


def fail(error: Exception) -> None:
    """Print a user or plugin error in one clear block and exit (2 for user errors, 1 for plugins)."""
    if isinstance(error, UserError):
        if int(os.environ.get("RANK", "0") or 0) > 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit(EXIT_USER_ERROR)  # rank 0 says it once
        err_console.print(f"[bold red]error:[/] {escape(error.render())}", markup=True)
        raise SystemExit(EXIT_USER_ERROR)
    err_console.print(f"[bold red]plugin error:[/] {escape(str(error))}", markup=True)
    if os.environ.get("GRPO_DEBUG"):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    raise SystemExit(1)


def load_recipe(path: str | Path, sets: list[str] | None = None, *, env: bool,
                resolved: bool = False) -> tuple[Recipe, Registry]:
    """Read, override, (optionally) expand ``${VAR}``, and validate a recipe; a run directory's
    `resolved` recipe written by an earlier version is read in this version's layout first."""
    data = load_toml(path)
    try:
        if resolved:
            data = upgrade_resolved(data)
        data = apply_overrides(data, sets or [])
        if env:
            data = expand_env(data)
        registry = load_registry(plugin_modules(data))
        return parse(data, registry, source=Path(path)), registry
    except RecursionError:
        raise nested_too_deeply(path) from None


def guard(fn):
    """Decorator: user errors and plugin errors exit cleanly instead of printing a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, PluginError) as e:
            fail(e)

    return wrapper
