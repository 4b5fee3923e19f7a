"""`grpo doctor RECIPE`: is everything a recipe needs on this machine? Variables, files, packages, devices.

`grpo validate` checks a recipe's structure and values only; the doctor looks at the machine. It
reads no weights (it only looks for files), so it is quick also for 14B-parameter models.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from grpo.core.preflight import PATH_OPTIONS
from grpo.core.recipe import ENV_PATTERN, apply_overrides, load_toml, parse, plugin_modules
from grpo.core.registry import load_registry

from .common import EXIT_USER_ERROR, console, guard

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")


@dataclass
class Check:
    what: str
    where: str
    ok: bool
    detail: str


def _env_checks(data: Any, where: str = "") -> list[Check]:
    out: list[Check] = []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _env_checks(v, f"{where}.{k}" if where else k)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _env_checks(v, f"{where}.{i}")
    elif isinstance(data, str):
        for name in ENV_PATTERN.findall(data):
            if name in os.environ:
                out.append(Check(f"${{{name}}}", where, True, os.environ[name]))
            else:
                out.append(Check(f"${{{name}}}", where, False, f"not set: export {name}=..."))
    return out


def _expand_known(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _expand_known(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_known(v) for v in data]
    if isinstance(data, str):
        return ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1), m.group(0)), data)
    return data


def _path_checks(table: dict[str, Any], where: str, kind: str, sources: dict[str, str]) -> list[Check]:
    out = []
    for key in PATH_OPTIONS:
        value = table.get(key)
        if not isinstance(value, str) or not value or ENV_PATTERN.search(value):
            continue  # empty (optional) or its variable is unset (reported above)
        p = Path(os.path.expanduser(value))
        place = f"{where}.{key}"
        if not p.exists():
            source = sources.get(key)
            out.append(Check(str(p), place, False, "does not exist" + (f"; get it: {source}" if source
                                                                          else ": download it there or change the path")))
            continue
        if key == "tokenizer" or key == "processor":
            found = p.is_dir() and any((p / f).is_file() for f in TOKENIZER_FILES)
            out.append(Check(str(p), place, found, "tokenizer files present" if found
                             else f"no tokenizer files ({', '.join(TOKENIZER_FILES)})"))
            continue
        if kind == "model" and p.is_dir() and (p / "model_index.json").is_file():
            index = json.loads((p / "model_index.json").read_text())
            parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
            missing = [k for k in parts if not (p / k).is_dir()]
            out.append(Check(str(p), place, not missing, f"diffusers pipeline ({index.get('_class_name')})"
                             + (f", missing {', '.join(missing)}" if missing else f": {', '.join(parts)}")))
            continue
        if kind == "model" and p.is_dir() and not any(p.iterdir()):
            out.append(Check(str(p), place, False, "empty folder"))
            continue
        out.append(Check(str(p), place, True, "folder" if p.is_dir() else f"file, {p.stat().st_size / 2**20:.1f} MiB"))
    return out


def _source(registry, data: dict[str, Any], where: str) -> str:
    """The plugin's own note on where the file behind `where` (e.g. ``reward.0.path``) comes from."""
    parts = where.split(".")
    if parts[0] == "reward" and len(parts) >= 3:
        table, kind, key = (data.get("reward") or [])[int(parts[1])], "reward", parts[2]
    elif len(parts) >= 2:
        table, kind, key = data.get(parts[0]) or {}, parts[0], parts[1]
    else:
        return ""
    try:
        factory = registry.get(kind, table.get("use", "")).factory
    except Exception:  # an unknown plugin was already reported by the recipe check
        return ""
    return getattr(factory, "sources", {}).get(key, "")


def _package(name: str, why: str) -> Check:
    found = importlib.util.find_spec(name) is not None
    return Check(f"package {name}", why, found, "installed" if found else f"missing: pip install {name}")


@guard
def doctor(
    recipe: Annotated[str, typer.Argument(help="path of a .toml recipe")],
    set_: Annotated[list[str], typer.Option("--set", help="override KEY=VALUE (TOML value)")] = [],  # noqa: B006
) -> None:
    """Check that every environment variable, file, folder and package the recipe needs is there."""
    data = apply_overrides(load_toml(recipe), set_)
    expanded = _expand_known(data)
    registry = load_registry(plugin_modules(expanded))
    parse(data, registry, source=Path(recipe))  # structure and values first, as `grpo validate`
    checks = _env_checks(data)
    for c in checks:  # where to get what an unset variable should point at
        if not c.ok:
            source = _source(registry, expanded, c.where)
            if source:
                c.detail += f"; get it: {source}"
    tables: list[tuple[str, str, dict[str, Any]]] = []
    for kind in ("model", "prompts", "backend"):
        if isinstance(expanded.get(kind), dict):
            tables.append((kind, kind, expanded[kind]))
    for i, table in enumerate(expanded.get("reward", []) or []):
        if isinstance(table, dict):
            tables.append((f"reward.{i}", "reward", table))
    for where, kind, table in tables:
        try:
            sources = getattr(registry.get(kind, table.get("use", "")).factory, "sources", {})
        except Exception:  # reported by the recipe check
            sources = {}
        checks += _path_checks(table, where, kind, sources)
    backend = (expanded.get("backend") or {}).get("use", "torch")
    if backend == "deepspeed":
        checks.append(_package("deepspeed", "backend.use"))
    model = expanded.get("model") or {}
    if int(model.get("lora_rank", 0) or 0) > 0:
        checks.append(_package("peft", "model.lora_rank"))
    wants_gpu = model.get("use") not in (None, "shapes") and model.get("device", "auto") in ("auto", "cuda")
    if wants_gpu:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        checks.append(Check("GPUs", "model.device", n > 0, f"{n} visible" if n else
                            "none visible: this model needs GPUs (see the recipe's first lines)"))
    table = Table(title=f"grpo doctor {recipe}", show_lines=False)
    for col in ("", "what", "where", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row("[green]ok[/]" if c.ok else "[bold red]missing[/]", escape(c.what), escape(c.where), escape(c.detail))
    console.print(table)
    bad = [c for c in checks if not c.ok]
    if bad:
        console.print(f"[bold red]{len(bad)} of {len(checks)} checks failed[/]: fix them, then run `grpo doctor {recipe}` again")
        raise SystemExit(EXIT_USER_ERROR)
    console.print(f"[green]all {len(checks)} checks passed[/]")
