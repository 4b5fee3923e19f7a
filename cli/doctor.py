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

from grpo.core import hub
from grpo.core.config import Recipe
from grpo.core.preflight import PATH_OPTIONS
from grpo.core.recipe import ENV_PATTERN, apply_overrides, load_toml, parse, plugin_modules
from grpo.core.registry import Entry, load_registry

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
        for m in ENV_PATTERN.finditer(data):
            name, default = m.group(1), m.group(2)
            if os.environ.get(name) or (name in os.environ and default is None):
                out.append(Check(f"${{{name}}}", where, True, os.environ[name]))
            elif default is not None:
                out.append(Check(f"${{{name}}}", where, True, f"not set: the recipe's default {default}"))
            else:
                out.append(Check(f"${{{name}}}", where, False, f"not set: export {name}=..."))
    return out


def _expand_known(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _expand_known(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_known(v) for v in data]
    if isinstance(data, str):
        return ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) if m.group(2) is not None
                                                                        else m.group(0)), data)
    return data


def _local_check(p: Path, place: str, key: str, kind: str, source: str | None) -> Check:
    """What is at the local path `p` that option `place` names."""
    if not p.exists():
        return Check(str(p), place, False, "does not exist" + (f"; get it: {source}" if source
                                                               else ": download it there or change the path"))
    if key == "tokenizer" or key == "processor":
        found = p.is_dir() and any((p / f).is_file() for f in TOKENIZER_FILES)
        return Check(str(p), place, found, "tokenizer files present" if found
                     else f"no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if kind == "model" and p.is_dir() and (p / "model_index.json").is_file():
        index = json.loads((p / "model_index.json").read_text())
        parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
        missing = [k for k in parts if not (p / k).is_dir()]
        return Check(str(p), place, not missing, f"diffusers pipeline ({index.get('_class_name')})"
                     + (f", missing {', '.join(missing)}" if missing else f": {', '.join(parts)}"))
    if kind == "model" and p.is_dir() and not any(p.iterdir()):
        return Check(str(p), place, False, "empty folder")
    if p.is_dir():
        return Check(str(p), place, True, f"folder, {hub.size_of(p) / 2**20:.1f} MiB")
    return Check(str(p), place, True, f"file, {p.stat().st_size / 2**20:.1f} MiB")


def _hub_check(ref: hub.HubRef, patterns: tuple[str, ...], place: str, key: str, kind: str,
               companions: tuple[str, ...] = ()) -> Check:
    """Is the Hub reference in the cache (whole), how big, and the command that fetches it."""
    ok, detail = hub.describe(ref, patterns, companions)
    snapshot = hub.cached(hub.HubRef(ref.repo, ref.revision))
    if snapshot is not None and patterns == hub.PIPELINE:  # say which components are there
        local = _local_check(snapshot, place, key, kind, None)
        detail = (f"{detail}; {local.detail}" if ok else
                  f"{local.detail} in the Hub cache; fetch the rest: {hub.fetch_command(ref, patterns)}")
    return Check(str(ref), place, ok, detail)


def _bundled(folder: Path, place: str) -> Check:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    if not files:
        return Check(str(folder), place, False, "the bundled weights are missing: reinstall the package")
    return Check("bundled weights", place, True, f"{len(files)} files, {hub.size_of(folder) / 2**20:.1f} MiB "
                 f"at {folder}")


def _path_checks(table: dict[str, Any], where: str, kind: str, entry: Entry | None) -> list[Check]:
    out = []
    sources = entry.sources if entry is not None else {}
    declared = entry.hub_patterns if entry is not None else {}
    for key in PATH_OPTIONS:
        value = table.get(key)
        place = f"{where}.{key}"
        bundled = entry.bundled.get(key) if entry is not None else None
        if bundled is not None and not value:  # the weights shipped with the package
            out.append(_bundled(Path(bundled), place))
            continue
        if not isinstance(value, str) or not value or ENV_PATTERN.search(value):
            continue  # empty (optional) or its variable is unset (reported above)
        ref = hub.hub_ref(value) if key in declared else None
        if ref is not None:
            out.append(_hub_check(ref, tuple(declared[key]), place, key, kind, entry.hub_companions.get(key, ())))
        else:
            path = Path(os.path.expanduser(value))
            found = _local_check(path, place, key, kind, sources.get(key))
            if found.ok and entry is not None and key in entry.file_options and not path.is_file():
                found = Check(str(path), place, False, "a folder, not a file" if path.is_dir()
                              else "not a regular file (a pipe or a device)")
            out.append(found)
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
        entry = registry.get(kind, table.get("use", ""))
    except Exception:  # an unknown plugin was already reported by the recipe check
        return ""
    return entry.sources.get(key, "")


PIP_NAMES = {"PIL": "pillow", "wandb": "'grpo[wandb]'"}  # import name -> what to pip install


def _package(name: str, why: str) -> Check:
    found = importlib.util.find_spec(name) is not None
    return Check(f"package {name}", why, found,
                 "installed" if found else f"missing: pip install {PIP_NAMES.get(name, name)}")


def _package_checks(recipe: Recipe, data: dict[str, Any]) -> list[Check]:
    """The packages the recipe's components and parts import when they are built (their ``requires``)."""
    wanted: dict[str, str] = {"tensorboard": "logging"}
    specs = [recipe.model, recipe.sampler, *recipe.strategy.parts(), recipe.prompts, recipe.backend, *recipe.rewards]
    for spec in specs:
        for name in spec.entry.requires:
            wanted.setdefault(name, f"{spec.where}.use")
    model = data.get("model") or {}
    if int(model.get("lora_rank", 0) or 0) > 0:
        wanted.setdefault("peft", "model.lora_rank")
    if (data.get("logging") or {}).get("wandb"):
        wanted.setdefault("wandb", "logging.wandb")
    return [_package(name, where) for name, where in wanted.items()]


def _torch_checks(data: dict[str, Any]) -> list[Check]:
    """The torch build, the GPUs a real model needs, and the threads torch will use."""
    import torch

    model = data.get("model") or {}
    cuda = torch.version.cuda
    out = [Check("torch", "", True, f"{torch.__version__}, " + (f"CUDA {cuda} build" if cuda else "CPU build"))]
    wants_gpu = model.get("use") not in (None, "shapes") and model.get("device", "auto") in ("auto", "cuda")
    if wants_gpu and not cuda:
        out.append(Check("GPUs", "model.device", False, "this torch is a CPU build: install a CUDA build of torch "
                         "(pytorch.org/get-started), or set model.device = \"cpu\" for a tiny model"))
    elif wants_gpu:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        out.append(Check("GPUs", "model.device", n > 0, f"{n} visible" if n else
                         "none visible: this model needs GPUs (see the recipe's first lines)"))
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS")
    detail = f"torch uses {threads} of {cores} cores" + (f" (OMP_NUM_THREADS={env})" if env else "")
    if not env and not wants_gpu:
        detail += "; for several runs at once (grpo compare does it for you) export OMP_NUM_THREADS=1"
    out.append(Check("threads", "", True, detail))
    return out


@guard
def doctor(
    recipe: Annotated[str, typer.Argument(help="path of a .toml recipe")],
    set_: Annotated[list[str], typer.Option("--set", help="override KEY=VALUE (TOML value)")] = [],  # noqa: B006
) -> None:
    """Check that every environment variable, file, folder and package the recipe needs is there."""
    data = apply_overrides(load_toml(recipe), set_)
    expanded = _expand_known(data)
    registry = load_registry(plugin_modules(expanded))
    parsed = parse(data, registry, source=Path(recipe))  # structure and values first, as `grpo validate`
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
            entry = registry.get(kind, table.get("use", ""))
        except Exception:  # reported by the recipe check
            entry = None
        checks += _path_checks(table, where, kind, entry)
    checks += _package_checks(parsed, expanded)
    checks += _torch_checks(expanded)
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
