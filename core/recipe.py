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
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from .abilities import complete, planned_noise_grid
from .compose import Composition, Slots, check_replaced_options, compose
from .errors import UserError, UserErrors, closest, unknown_name_hint
from .registry import Entry, Registry, attributed, instantiate
from .sampler import check_noise_block
from .schema import Doc, Range, component_table, options_of, toml_value, validate
from .strategy import SLOTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# ${VAR} or ${VAR:-default}: the variable's value, else the default (a Hub id in the real recipes).
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
TABLES = ("model", "strategy", "sampler", "reward", "prompts", "train", "eval", "backend", "logging", "plugins")
INFORMATIONAL = ("provenance", "parts")  # written into recipe.resolved.toml; ignored when read back


@dataclass(kw_only=True)
class TrainConfig:
    """``[train]``: the loop, the optimizer and the update."""

    iterations: Annotated[int, Range(ge=1), Doc("training iterations")] = 100
    prompts_per_iteration: Annotated[int, Range(ge=1), Doc("prompts (trees) per iteration")] = 8
    seed: Annotated[int, Range(ge=0), Doc("seed of prompts, noise and pruning")] = 0
    lr: Annotated[float, Range(gt=0), Doc("AdamW learning rate (constant)")] = 1e-5
    weight_decay: Annotated[float, Range(ge=0), Doc("AdamW weight decay")] = 1e-4
    betas: Annotated[list[float], Range(ge=0, lt=1), Doc("AdamW betas")] = field(default_factory=lambda: [0.9, 0.999])
    eps: Annotated[float, Range(gt=0), Doc("AdamW epsilon")] = 1e-8
    grad_clip: Annotated[float, Range(gt=0), Doc("gradient-norm clip")] = 1.0
    optimizer_steps: Annotated[int, Range(ge=1), Doc("optimizer steps per epoch over the trained edges")] = 1
    epochs: Annotated[int, Range(ge=1), Doc("passes over the trained edges per iteration")] = 1
    accumulation_unit: Annotated[
        Literal["edges", "chains"], Doc("split optimizer steps by edges, or keep each chain's edges together")
    ] = "edges"
    micro_batch: Annotated[int, Range(ge=1), Doc("edges per forward/backward in the update")] = 16
    rollout_batch: Annotated[int, Range(ge=1), Doc("nodes per forward in the rollout")] = 64
    kl_beta: Annotated[float, Range(ge=0), Doc("weight of the KL penalty to the base policy (0 = off)")] = 0.0
    kl_form: Annotated[Literal["gaussian", "flow-grpo"], Doc(
        "the exact Gaussian KL per noise draw, or Flow-GRPO's (the gaussian one × the step size Δ)")] = "gaussian"
    grpo_guard: Annotated[bool, Doc(
        "GRPO-Guard: the re-centred log-ratio s·(log r + ‖Δμ‖²/2s²) in the clipped objective and each step's "
        "loss divided by its Δσ (pair with a clip range near 1e-6 as released)")] = False
    ema_decay: Annotated[float, Range(ge=0, lt=1), Doc(
        "EMA of the trained weights, used by evaluation and export (0 = off; Flow-GRPO: 0.9)")] = 0.0
    ema_every: Annotated[int, Range(ge=1), Doc("optimizer steps between EMA updates (Flow-GRPO: 8)")] = 1
    init_same_noise: Annotated[bool, Doc("one initial noise shared by all prompts of an iteration")] = True
    reward_aggregation: Annotated[
        Literal["sum", "advantage"], Doc("weight rewards before advantages ('sum') or advantages per reward")
    ] = "sum"
    time_budget: Annotated[
        float, Range(ge=0), Doc("minutes of training (evaluations excluded) after which the run ends; 0 = off")
    ] = 0.0
    checkpoint_every: Annotated[int, Range(ge=1), Doc("iterations between checkpoints")] = 10
    keep_checkpoints: Annotated[int, Range(ge=1), Doc("checkpoints kept on disk")] = 2
    threads: Annotated[int, Range(ge=0), Doc("torch CPU threads (0 = torch's default)")] = 0
    tf32: Annotated[
        bool, Doc("allow TF32 matmuls and convolutions on NVIDIA GPUs (faster; on-policy ratios drift by ~4e-5)")
    ] = False


@dataclass(kw_only=True)
class EvalConfig:
    """``[eval]``: fixed prompts and fixed noise, sampled with the ODE sampler."""

    every: Annotated[int, Range(ge=0), Doc("iterations between evaluations (0 = never; unused when every_minutes is set)")] = 10
    every_minutes: Annotated[float, Range(ge=0), Doc(
        "evaluate at every multiple of this many minutes of training time (the clock of train.time_budget, "
        "evaluations excluded), after the iteration that reaches it; 0 = count iterations (every)")] = 0.0
    steps: Annotated[int, Range(ge=0), Doc("ODE steps (0 = the sampler's steps)")] = 0
    seed: Annotated[int, Range(ge=0), Doc("seed of the evaluation noise (never used in training)")] = 1_000_003
    grid_images: Annotated[int, Range(ge=0), Doc("images in the saved sample grid")] = 32
    batch: Annotated[int, Range(ge=1), Doc("images per forward")] = 64


@dataclass(kw_only=True)
class LoggingConfig:
    """``[logging]``: where metrics go: ``metrics.jsonl`` always, TensorBoard, and Weights & Biases."""

    tensorboard: Annotated[bool, Doc("write TensorBoard events")] = True
    progress: Annotated[bool, Doc("show a live progress bar")] = True
    wandb: Annotated[bool, Doc("also log to Weights & Biases: scalars, sample grids, videos, the recipe as "
                                "config (pip install 'grpo[wandb]')")] = False
    project: Annotated[str, Doc("wandb project")] = "grpo"
    entity: Annotated[str, Doc("wandb entity (team or user); empty: your default")] = ""
    name: Annotated[str, Doc("wandb run name; empty: the run folder's name")] = ""
    mode: Annotated[Literal["online", "offline", "disabled"],
                    Doc("wandb mode: offline keeps the run in RUN/wandb for `wandb sync`")] = "online"


@dataclass(kw_only=True)
class PluginsConfig:
    """``[plugins]``: local plugin modules to load without packaging them."""

    modules: Annotated[list[str], Doc("importable module names with grpo hook implementations")] = field(
        default_factory=list
    )


@dataclass
class Component:
    """A validated component table."""

    entry: Entry
    options: dict[str, Any]
    where: str

    def create(self) -> Any:
        """Instantiate the plugin with the validated options."""
        return instantiate(self.entry, self.options, self.where)

    def table(self) -> dict[str, Any]:
        """The component's table with every option filled in (``recipe.resolved.toml``)."""
        return component_table(self.entry.name, self.options)


@dataclass
class RewardSpec(Component):
    weight: float = 1.0
    name: str = ""

    @property
    def label(self) -> str:
        """The name its scores are logged under: ``name`` when given, else the plugin's name."""
        return self.name or self.entry.name


@dataclass
class Recipe:
    """A validated recipe; each component's ``create()`` instantiates it. The strategy and the
    sampler are pure configuration and are built once, here: ``composition`` holds the strategy
    with the recipe's slots applied, ``sampler_instance`` the sampler."""

    source: Path | None
    model: Component
    strategy: Component
    sampler: Component
    rewards: list[RewardSpec]
    prompts: Component
    backend: Component
    train: TrainConfig
    eval: EvalConfig
    logging: LoggingConfig
    plugins: PluginsConfig
    slots: Slots
    composition: Composition
    sampler_instance: Any
    noise_grid: tuple[int, ...] | None = None  # the latent grid noise tiles, when known without weights

    def to_dict(self) -> dict[str, Any]:
        """All tables with every default filled in (``recipe.resolved.toml``)."""
        return {
            "model": self.model.table(),
            "strategy": self._strategy_table(),
            "sampler": self.sampler.table(),
            "reward": [{**r.table(), "weight": r.weight, **({"name": r.name} if r.name else {})} for r in self.rewards],
            "prompts": self.prompts.table(),
            "train": {k: toml_value(v) for k, v in asdict(self.train).items()},
            "eval": asdict(self.eval),
            "backend": self.backend.table(),
            "logging": asdict(self.logging),
            "plugins": asdict(self.plugins),
        }

    def _strategy_table(self) -> dict[str, Any]:
        """The strategy's options, without those of default parts the recipe replaced, and the
        recipe's own slots."""
        replaced = self.slots.replaced()
        table = self.strategy.table()
        for opt in self.strategy.entry.options:
            if opt.part in replaced:
                table.pop(opt.name, None)
        for slot in ("topology", "advantage"):
            comp = getattr(self.slots, slot)
            if comp is not None:
                table[slot] = comp.table()
        if self.slots.pruner is not None:
            table["pruner"] = [c.table() for c in self.slots.pruner]
        return table

    def provenance(self) -> dict[str, str]:
        comps = [self.model, self.strategy, self.sampler, self.prompts, self.backend, *self.rewards]
        out = {f"{c.entry.kind}.{c.entry.name}": c.entry.distribution for c in comps}
        for slot, rec in self.composition.records.items():
            for r in rec if isinstance(rec, list) else [rec]:
                out[f"{slot}.{r.name}"] = r.distribution
        return out


def load_toml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"recipe {str(path)!r} does not exist", hint="give the path of a .toml recipe, e.g. recipes/shapes_dance.toml")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8)",
                        hint="give a TOML recipe, e.g. recipes/shapes_dance.toml") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}", hint="fix the syntax at the line and column given") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


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
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"--set {key!r}: {part!r} is not an index of the {len(node)} tables of {'.'.join(parts[:i])}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {key!r}: {'.'.join(parts[: i + 1])} is a value, not a table")
        if isinstance(node, list):
            raise UserError(f"--set {key!r}: name the table index, e.g. reward.0.weight")
        node[parts[-1]] = _parse_value(raw.strip())
    return data


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
               *, ignore: tuple[str, ...] = (), default_use: str | None = None) -> Component | None:
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
    return Component(entry, options, where)


def _with_strategy_defaults(table: Any, default_use: str, defaults: dict[str, Any]) -> Any:
    """The sampler table with the strategy's defaults (e.g. T = 20, shift 3) under the recipe's keys,
    when the recipe uses the strategy's own sampler."""
    if table is None:
        table = {}
    if not isinstance(table, dict) or table.get("use", default_use) != default_use:
        return table
    return {**defaults, **table}


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


def _strategy(registry: Registry, table: Any, errors: list[UserError]) -> tuple[Component | None, Slots]:
    """``[strategy]``: the strategy's own options, and the slots the recipe fills with parts."""
    slots = Slots()
    if not isinstance(table, dict):
        errors.append(UserError(f"expected a table, got {table!r}", where="strategy"))
        return None, slots
    own = {k: v for k, v in table.items() if k not in SLOTS}
    strategy = _component(registry, "strategy", own, "strategy", errors)
    for slot in ("topology", "advantage"):
        if slot in table:
            setattr(slots, slot, _component(registry, slot, table[slot], f"strategy.{slot}", errors))
    if "pruner" in table:
        pruners = table["pruner"]
        pruners = [pruners] if isinstance(pruners, dict) else pruners
        if not isinstance(pruners, list):
            errors.append(UserError(f"expected a list of pruner tables, got {pruners!r}", where="strategy.pruner",
                                    hint="write [[strategy.pruner]] tables, or pruner = [] for no pruning"))
            pruners = []
        slots.pruner = [_component(registry, "pruner", t, f"strategy.pruner.{i}", errors) for i, t in enumerate(pruners)]
    if strategy is not None:
        try:
            check_replaced_options(strategy, own, slots)
        except UserErrors as e:
            errors.extend(e.errors)
    return strategy, slots


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
    """Validate a recipe dict (every problem collected into one UserErrors)."""
    errors: list[UserError] = []
    _check_tables(data, registry, errors)
    model = _component(registry, "model", data.get("model"), "model", errors) if "model" in data else None
    strategy, slots = _strategy(registry, data["strategy"], errors) if "strategy" in data else (None, Slots())
    prompts = _component(registry, "prompts", data.get("prompts"), "prompts", errors) if "prompts" in data else None
    composition, sampler_table = None, data.get("sampler")
    if strategy is not None and None not in (slots.pruner or []):
        try:
            composition = compose(strategy, slots, registry)
            parts = composition.parts
            sampler_table = _with_strategy_defaults(sampler_table, parts.sampler, parts.sampler_defaults)
        except UserError as e:  # UserErrors too
            errors.extend(e.errors if isinstance(e, UserErrors) else [e])
    default_sampler = composition.parts.sampler if composition else None
    sampler = _component(registry, "sampler", sampler_table, "sampler", errors, default_use=default_sampler)
    backend = _component(registry, "backend", data.get("backend"), "backend", errors, default_use="torch")
    rewards = _rewards(registry, data.get("reward", []), errors)
    train = _config(TrainConfig, data.get("train"), "train", errors)
    eval_cfg = _config(EvalConfig, data.get("eval"), "eval", errors)
    logging_cfg = _config(LoggingConfig, data.get("logging"), "logging", errors)
    plugins_cfg = _config(PluginsConfig, data.get("plugins"), "plugins", errors)
    if train is not None and len(train.betas) != 2:
        errors.append(UserError(f"expected two numbers, got {train.betas!r}", where="train.betas"))
    if errors:
        raise UserErrors(errors)
    assert model and strategy and sampler and prompts and backend and composition
    recipe = Recipe(source, model, strategy, sampler, rewards, prompts, backend, train, eval_cfg, logging_cfg,
                    plugins_cfg, slots, composition, sampler.create())
    check_consistency(recipe)
    return recipe


def check_consistency(recipe: Recipe) -> None:
    """Cross-table checks that need cheap components (no weights are read)."""
    errors: list[UserError] = []
    sampler = recipe.sampler_instance
    try:
        recipe.backend.create()  # its constructor checks its options against each other
    except UserError as e:
        errors.append(e)
    if not sampler.stochastic:
        errors.append(UserError(
            f"sampler {recipe.sampler.entry.name!r} is deterministic, so no step has a log-probability to train",
            where="sampler.use", hint="use a stochastic sampler (dance-sde, flow-sde); ode is used for evaluation",
        ))
    errors += _check_parts(recipe, sampler.steps)
    recipe.noise_grid = planned_noise_grid(recipe.model.entry.factory, recipe.model.options)
    if recipe.noise_grid is not None:
        try:
            check_noise_block(recipe.noise_grid, complete(sampler, "sampler").noise_block)
        except UserError as e:
            errors.append(e)
    if errors:
        raise UserErrors(errors)


def _check_parts(recipe: Recipe, steps: int) -> list[UserError]:
    """The tree fits the sampler's steps, and every pruner's options fit the tree."""
    parts, records = recipe.composition.parts, recipe.composition.records
    try:
        with attributed(records["topology"], "plan()"):
            plan = parts.topology.plan(steps)
    except UserError as e:
        return [e]
    errors = []
    for pruner, record in zip(parts.pruners, records["pruner"], strict=True):
        try:
            with attributed(record, "check_plan()"):
                complete(pruner, "pruner").check_plan(plan)
        except UserError as e:
            table = "strategy" if record.chosen_by == "strategy" else record.chosen_by
            errors.append(UserError(e.message, where=f"{table}.{e.where}" if e.where else table, hint=e.hint))
    return errors


def plugin_modules(data: dict[str, Any]) -> list[str]:
    """The ``[plugins] modules`` list of a raw recipe (read before the registry is built)."""
    table = data.get("plugins", {})
    modules = table.get("modules", []) if isinstance(table, dict) else []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise UserError(f"expected a list of module names, got {modules!r}", where="plugins.modules")
    return modules
