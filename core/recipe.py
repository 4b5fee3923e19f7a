"""Recipes: TOML files naming the components of a run and their options.

Tables: ``[model]``, ``[strategy]``, ``[sampler]``, ``[[reward]]`` (one per reward), ``[prompts]``,
``[train]``, ``[eval]``, ``[backend]``, ``[logging]`` and ``[plugins]``. Every component table has a
``use`` key naming a registered plugin; its other keys are validated against the plugin's typed
constructor. ``${VAR}`` in a string is replaced by the environment variable VAR when a run starts.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any

from .compose import resolve_strategy
from .config import (
    EvalConfig,
    LoggingConfig,
    PartSpec,
    PluginsConfig,
    Recipe,
    RewardSpec,
    TrainConfig,
    ema_repeats_problem,
)
from .errors import PluginError, UserError, UserErrors, closest, unknown_name_hint
from .registry import Registry
from .schema import options_of, validate
from .strategy import Part, Preset
from .tomlfile import load_toml as load_toml  # the recipe file reader, re-exported
from .tomlfile import tomllib

# ${VAR} or ${VAR:-default}: the variable's value, else the default (a Hub id in the real recipes).
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
TABLES = ("model", "strategy", "sampler", "reward", "prompts", "train", "eval", "backend", "logging", "plugins")
INFORMATIONAL = ("provenance", "parts")  # written into recipe.resolved.toml; ignored when read back
# keys of earlier versions that now live elsewhere, with where to write them
MOVED = {
    "train.kl_beta": "the KL penalty is the objective's: [strategy.objective] kl_beta (or strategy.kl_beta)",
    "train.kl_form": "the KL penalty is the objective's: [strategy.objective] kl_form (or strategy.kl_form)",
    "train.grpo_guard": "GRPO-Guard is an option of the clipped-ratio objective: [strategy.objective] grpo_guard "
                        "(or strategy.grpo_guard)",
}


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string
    except RecursionError:
        raise UserError(f"--set value {text[:40]!r}… is nested too deeply to read",
                        hint="a value nests a few levels at most") from None


def apply_overrides(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``--set KEY=VALUE`` overrides (VALUE in TOML syntax; bare words are strings).

    ``reward.0.weight=2`` addresses the first ``[[reward]]`` table.
    """
    data = copy.deepcopy(data)
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set train.iterations=2")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if parts[0] not in TABLES:
            raise UserError(f"--set {key!r}: unknown table {parts[0]!r}", hint=unknown_name_hint(parts[0], TABLES))
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            indexed = parts[i + 1].isdigit() and i + 1 < len(parts) - 1  # the next part indexes a list of tables
            if isinstance(node, list):
                node = _table_at(node, part, key, ".".join(parts[:i]))
            elif part.isdigit() and i > 0:
                raise UserError(f"--set {key!r}: {'.'.join(parts[:i])} is one table, not a list of tables",
                                hint=f"drop the index: --set {'.'.join(parts[:i] + parts[i + 1:])}=...")
            else:
                node = node.setdefault(part, [] if indexed else {})
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {key!r}: {'.'.join(parts[: i + 1])} is a value, not a table")
        if isinstance(node, list):
            raise UserError(f"--set {key!r}: name the table index, e.g. reward.0.weight")
        node[parts[-1]] = _parse_value(raw.strip())
    return data


def _table_at(tables: list[Any], part: str, key: str, where: str) -> Any:
    """The table at index `part` of a list of tables; one past the end adds tables without ``use``
    (which change the strategy's own parts at those positions)."""
    if not part.isdigit():
        raise UserError(f"--set {key!r}: {part!r} is not an index of the tables of {where}",
                        hint=f"e.g. --set {where}.0.KEY=VALUE")
    while int(part) >= len(tables) and where == "strategy.pruner":
        tables.append({})
    if int(part) >= len(tables):
        raise UserError(f"--set {key!r}: {part!r} is not an index of the {len(tables)} tables of {where}")
    return tables[int(part)]


def expand_env(data: Any, where: str = "", *, environ: dict[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; a missing variable without a
    default is a UserError naming the TOML path (an empty one counts as missing where there is a
    default)."""
    env = os.environ if environ is None else environ
    if isinstance(data, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else k, environ=env) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, f"{where}.{i}", environ=env) for i, v in enumerate(data)]
    if isinstance(data, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if default is not None and not env.get(name):
                return default
            if name not in env:
                raise UserError(
                    f"environment variable {name} is not set", where=where,
                    hint=f"export {name}=... before running (the recipe reads it as ${{{name}}})",
                )
            return env[name]

        return ENV_PATTERN.sub(repl, data)
    return data


def _has_env(value: Any) -> bool:
    if isinstance(value, str):
        return bool(ENV_PATTERN.search(value))
    if isinstance(value, list):
        return any(_has_env(v) for v in value)
    return False


def _component(registry: Registry, kind: str, table: Any, where: str, errors: list[UserError],
               *, ignore: tuple[str, ...] = (), default_use: str | None = None) -> PartSpec | None:
    if table is None:
        table = {}
    if not isinstance(table, dict):
        errors.append(UserError(f"expected a table, got {table!r}", where=where))
        return None
    use = table.get("use", default_use)
    if use is None:
        typo = next((k for k in table if difflib.get_close_matches(k, ["use"], cutoff=0.6)), None)
        if typo is not None:
            errors.append(UserError(f"unknown key {typo!r}", where=f"{where}.{typo}",
                                    hint=f"did you mean 'use'? (which {kind}: " + ", ".join(registry.names(kind)) + ")"))
        else:
            errors.append(UserError(f"missing key 'use' (which {kind})", where=where,
                                    hint="valid: " + ", ".join(registry.names(kind))))
        return None
    try:
        entry = registry.get(kind, use, where=f"{where}.use")
    except UserError as e:
        errors.append(e)
        return None
    opts = {k: v for k, v in table.items() if k != "use" and not _has_env(v)}
    deferred = {k: v for k, v in table.items() if k != "use" and _has_env(v)}
    known = {o.name for o in options_of(entry.factory)} | set(ignore)
    unknown = [k for k in deferred if k not in known]
    for k in unknown:
        best = closest(k, known)
        errors.append(UserError(f"unknown key {k!r}", where=f"{where}.{k}",
                                hint=(f"did you mean {best!r}? " if best else "") + "valid keys: " + ", ".join(sorted(known))))
    try:
        # a value read from ${VAR} is checked when the run starts; here its key counts as given
        options = validate(entry.factory, {**opts, **deferred}, where, ignore=(*ignore, *deferred))
    except UserErrors as e:
        errors.extend(e.errors)
        return None
    if unknown:
        return None
    options.update({k: v for k, v in deferred.items() if k not in ignore})
    return PartSpec(entry, options, where)


def _with_strategy_defaults(table: Any, default: Part) -> Any:
    """The sampler table with the strategy's defaults (e.g. T = 20, shift 3) under the recipe's keys,
    when the recipe uses the strategy's own sampler."""
    if table is None:
        table = {}
    if not isinstance(table, dict) or table.get("use", default.name) != default.name:
        return table
    return {**default.options, **table}


def _config(cls: type, table: Any, where: str, errors: list[UserError]) -> Any:
    if table is None:
        table = {}
    if not isinstance(table, dict):
        errors.append(UserError(f"expected a table, got {table!r}", where=where))
        return cls()
    try:
        return cls(**validate(cls, table, where))
    except UserErrors as e:
        errors.extend(e.errors)
        return cls()


def _train(table: Any, preset: Preset | None, errors: list[UserError]) -> TrainConfig:
    """``[train]`` over the strategy's defaults; a key that moved is named with its new place."""
    if preset is not None:
        unknown = sorted(set(preset.train) - {o.name for o in options_of(TrainConfig)})
        if unknown:
            raise PluginError(f"a strategy's preset sets [train] {unknown[0]!r}, which is not a [train] key")
    table = {} if table is None else table
    if isinstance(table, dict):
        for key in [k for k in table if f"train.{k}" in MOVED]:
            errors.append(UserError(f"{key!r} is no longer a [train] key", where=f"train.{key}",
                                    hint=f"it moved: {MOVED[f'train.{key}']}"))
        table = {k: v for k, v in table.items() if f"train.{k}" not in MOVED}
        table = {**(preset.train if preset is not None else {}), **table}
    return _config(TrainConfig, table, "train", errors)


def _eval_solver(registry: Registry, cfg: EvalConfig, errors: list[UserError]) -> PartSpec | None:
    """The registered solver ``[eval] solver`` names, with its default options."""
    try:
        entry = registry.get("solver", cfg.solver, where="eval.solver")
        return PartSpec(entry, validate(entry.factory, {}, "eval.solver"), "eval.solver")
    except UserError as e:  # UserErrors too: a solver with a required option
        errors.extend(e.errors if isinstance(e, UserErrors) else [e])
        return None


def _rewards(registry: Registry, tables: Any, errors: list[UserError]) -> list[RewardSpec]:
    """``[[reward]]``: one table per reward, each with its weight and an optional label."""
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not tables:
        errors.append(UserError("no [[reward]] table", where="reward",
                                hint="add one, e.g. [[reward]] use = \"shapes-faithfulness\"; valid: "
                                + ", ".join(registry.names("reward"))))
        return []
    rewards: list[RewardSpec] = []
    for i, table in enumerate(tables):
        where = f"reward.{i}"
        comp = _component(registry, "reward", table, where, errors, ignore=("weight", "name"))
        weight = table.get("weight", 1.0) if isinstance(table, dict) else 1.0
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            errors.append(UserError(f"expected a number, got {weight!r}", where=f"{where}.weight"))
            weight = 1.0
        name = table.get("name", "") if isinstance(table, dict) else ""
        if not isinstance(name, str) or (name and not re.fullmatch(r"[A-Za-z0-9_.-]+", name)):
            errors.append(UserError(f"expected a name of letters, digits, '-', '_' or '.', got {name!r}",
                                    where=f"{where}.name"))
            name = ""
        if comp is not None:
            spec = RewardSpec(comp.entry, comp.options, comp.where, weight=float(weight), name=name)
            if spec.label in [r.label for r in rewards]:
                errors.append(UserError(
                    f"two rewards are logged as {spec.label!r}", where=f"{where}.name",
                    hint=f"give this one its own label, e.g. name = \"{spec.entry.name}-{i}\""))
            rewards.append(spec)
    return rewards


def _check_tables(data: dict[str, Any], registry: Registry, errors: list[UserError]) -> None:
    for key in data:
        if key not in TABLES and key not in INFORMATIONAL:
            best = closest(key, TABLES)
            errors.append(UserError(f"unknown table [{key}]", where=key,
                                    hint=(f"did you mean [{best}]? " if best else "") + "valid: " + ", ".join(TABLES)))
    for required in ("model", "strategy", "prompts"):
        if required not in data:
            errors.append(UserError(f"missing table [{required}]", where=required,
                                    hint="valid names: " + ", ".join(registry.names(required))))


def parse(data: dict[str, Any], registry: Registry, *, source: Path | None = None) -> Recipe:
    """Validate a recipe dict into a ``Recipe`` (every problem collected into one UserErrors).

    Only what each table says is checked here; ``grpo.core.components.build_parts`` checks the parts
    against each other (the tree against the sampler's steps, the pruners against the tree ...)."""
    errors: list[UserError] = []
    _check_tables(data, registry, errors)
    model = _component(registry, "model", data.get("model"), "model", errors) if "model" in data else None
    strategy, preset = resolve_strategy(registry, data["strategy"], errors) if "strategy" in data else (None, None)
    prompts = _component(registry, "prompts", data.get("prompts"), "prompts", errors) if "prompts" in data else None
    default_sampler = preset.sampler if preset is not None else Part("dance-sde")
    sampler = _component(registry, "sampler", _with_strategy_defaults(data.get("sampler"), default_sampler), "sampler",
                         errors, default_use=default_sampler.name)
    backend = _component(registry, "backend", data.get("backend"), "backend", errors, default_use="torch")
    rewards = _rewards(registry, data.get("reward", []), errors)
    train = _train(data.get("train"), preset, errors)
    eval_cfg = _config(EvalConfig, data.get("eval"), "eval", errors)
    eval_solver = _eval_solver(registry, eval_cfg, errors)
    logging_cfg = _config(LoggingConfig, data.get("logging"), "logging", errors)
    plugins_cfg = _config(PluginsConfig, data.get("plugins"), "plugins", errors)
    if len(train.betas) != 2:
        errors.append(UserError(f"expected two numbers, got {train.betas!r}", where="train.betas"))
    if (problem := ema_repeats_problem(train.ema_decay, train.ema_schedule, train.ema_repeats)) is not None:
        errors.append(problem)
    if errors:
        raise UserErrors(errors)
    assert model and strategy and sampler and prompts and backend and eval_solver
    return Recipe(source, model, strategy, sampler, rewards, prompts, backend, eval_solver, train, eval_cfg,
                  logging_cfg, plugins_cfg, dict(registry.entries["solver"]))


def upgrade_resolved(data: dict[str, Any]) -> dict[str, Any]:
    """A run directory's ``recipe.resolved.toml`` as written by grpo 0.1, in 0.2's layout; any other
    recipe unchanged.

    0.1 wrote the strategy's own options in ``[strategy]``, the KL and GRPO-Guard in ``[train]`` and
    every part that ran, with all its options, in ``[parts]``. The parts become the strategy's tables
    (each naming its part, so exactly those parts run with exactly those options), the loss settings
    the ``clipped-ratio`` objective's, and the deterministic steps Euler's, as 0.1 ran them."""
    strategy, parts = data.get("strategy"), data.get("parts")
    if not isinstance(strategy, dict) or "objective" in strategy or not isinstance(parts, dict) \
            or not {"topology", "advantage", "pruner"} <= set(parts):
        return data

    def table(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k not in ("provided_by", "chosen_by")}

    out = copy.deepcopy(data)
    train = out.setdefault("train", {})
    objective = {"use": "clipped-ratio", "clip_range": strategy.get("clip_range", 1e-4),
                 "split_logprob": strategy.get("split_logprob", "nominal"), "kl_beta": train.pop("kl_beta", 0.0),
                 "kl_form": train.pop("kl_form", "gaussian"), "grpo_guard": train.pop("grpo_guard", False)}
    pruners = [table(r) for r in parts["pruner"]]
    if "pruner" not in strategy:  # the strategy's own pruners: as its 0.2 preset lists them
        pruners = _preset_pruners(strategy, pruners)
    out["strategy"] = {"use": strategy.get("use"), "topology": table(parts["topology"]),
                       "advantage": table(parts["advantage"]), "pruner": pruners, "objective": objective,
                       "solver": {"use": "euler"}}
    return out


def _preset_pruners(strategy: dict[str, Any], ran: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pruners a 0.1 built-in strategy ran, in the form of its 0.2 preset. 0.1 made a pruner only
    when an option asked for it; the preset always lists it, neutral where 0.1 made none (no depth
    pruned, every chain kept, every step a candidate), which trains the same edges."""
    s, use = strategy, strategy.get("use")
    if use in ("branchgrpo", "branchgrpo-mix") and "pruned_depths" in s:
        out = [{"use": "depth", "pruned_depths": s["pruned_depths"], "depth_slide_every": s.get("depth_slide_every", 0),
                "depth_stop": s.get("depth_stop", -1), "pruning_fraction": s.get("pruning_fraction", 1.0)},
               {"use": "width", "width_ratio": s.get("width_ratio") or 1.0, "width_pooled": s.get("width_pooled", False),
                "pruning_fraction": s.get("pruning_fraction", 1.0),
                "width_pooled_across_ranks": s.get("width_pooled_across_ranks", False)}]
        return out + ([{"use": "last-step"}] if s.get("train_last_step") is False else [])
    if use == "dancegrpo" and "timestep_fraction" in s:
        return [{"use": "timestep-fraction", "timestep_fraction": s["timestep_fraction"],
                 "ignore_last": s.get("ignore_last", False), "step_window": s.get("step_window", []),
                 "step_rounding": s.get("step_rounding", "up"), "step_choice": "random"}]
    return ran


def plugin_modules(data: dict[str, Any]) -> list[str]:
    """The ``[plugins] modules`` list of a raw recipe (read before the registry is built)."""
    table = data.get("plugins", {})
    modules = table.get("modules", []) if isinstance(table, dict) else []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise UserError(f"expected a list of module names, got {modules!r}", where="plugins.modules")
    return modules


# settings a resumed run may change: they decide how long it runs, how often it checkpoints, evaluates
# and logs, never what the iterations already trained would have been
RESUMABLE = ("train.iterations", "train.time_budget", "train.checkpoint_every", "train.keep_checkpoints",
             "train.threads", "eval.every", "eval.every_minutes", "logging.")


def changed_keys(before: Any, after: Any, prefix: str = "") -> dict[str, list]:
    """The dotted keys whose values differ between two recipe tables (lists of tables by index), each
    with its [old, new] values."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: dict[str, list] = {}
        for key in sorted(set(before) | set(after), key=str):
            if key not in INFORMATIONAL or prefix:
                out.update(changed_keys(before.get(key), after.get(key), f"{prefix}{key}."))
        return out
    if (isinstance(before, list) and isinstance(after, list) and len(before) == len(after)
            and all(isinstance(x, dict) for x in before + after)):
        out = {}
        for i, (x, y) in enumerate(zip(before, after, strict=True)):
            out.update(changed_keys(x, y, f"{prefix}{i}."))
        return out
    return {} if before == after else {prefix.rstrip("."): [before, after]}


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def check_resume_changes(before: dict[str, Any], after: dict[str, Any], *, where: str, what: str) -> dict[str, list]:
    """The settings a resumed run changes, as {key: [old, new]}; a UserError naming every key that may
    not change once iterations were trained with the old value."""
    changed = changed_keys(before, after)
    refused = [k for k in changed if not resumable(k)]
    if refused:
        allowed = ", ".join(k + ("*" if k.endswith(".") else "") for k in RESUMABLE)
        raise UserError(f"{what} changes {', '.join(refused)}, which the iterations already trained used",
                        where=where, hint=f"a resumed run may change only {allowed}; for other settings start a new "
                                          "run with `grpo run RECIPE --out NEW_DIR`")
    return changed
