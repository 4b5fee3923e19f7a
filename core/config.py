"""A parsed recipe as data: the run tables' settings and, for every component and part, the registered
entry it names with its complete options and the recipe path of each.

Nothing here is built: ``grpo.core.components`` builds the components from a ``Recipe`` once.
``grpo.core.recipe`` parses TOML into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from .errors import UserError, UserErrors
from .registry import Entry, instantiate
from .schema import Doc, Range, component_table, toml_value
from .strategy import SLOTS


@dataclass(kw_only=True)
class TrainConfig:
    """``[train]``: the loop, the optimizer and the update's schedule."""

    iterations: Annotated[int, Range(ge=1), Doc("training iterations")] = 100
    prompts_per_iteration: Annotated[int, Range(ge=1), Doc("prompts (trees) per iteration")] = 8
    seed: Annotated[int, Range(ge=0, le=2**63 - 1), Doc("seed of prompts, noise and pruning")] = 0
    lr: Annotated[float, Range(gt=0), Doc("AdamW learning rate (constant)")] = 1e-5
    weight_decay: Annotated[float, Range(ge=0), Doc("AdamW weight decay")] = 1e-4
    betas: Annotated[list[float], Range(ge=0, lt=1), Doc("AdamW betas")] = field(default_factory=lambda: [0.9, 0.999])
    eps: Annotated[float, Range(gt=0), Doc("AdamW epsilon")] = 1e-8
    grad_clip: Annotated[float, Range(gt=0), Doc("gradient-norm clip")] = 1.0
    optimizer_steps: Annotated[int, Range(ge=1), Doc("optimizer steps per epoch over the trained units")] = 1
    epochs: Annotated[int, Range(ge=1), Doc("passes over the trained units per iteration")] = 1
    accumulation_unit: Annotated[
        Literal["edges", "chains"],
        Doc("split optimizer steps by unit, or keep each chain's units (a leaf's edges) together"),
    ] = "edges"
    micro_batch: Annotated[int, Range(ge=1), Doc("units (edges) per forward/backward in the update")] = 16
    micro_batch_order: Annotated[Literal["chain", "step"], Doc(
        "how an optimizer step's units fill its micro-batches: chain (with accumulation_unit = \"chains\", each "
        "chain's units in turn) or step (every unit of the first step, then of the second, …: a micro-batch holds one "
        "step of several chains, as in the released Flow-GRPO trainers, which GRPO-Guard's shared mean-shift term "
        "reads)")] = "chain"
    rollout_batch: Annotated[int, Range(ge=1), Doc("nodes per forward in the rollout")] = 64
    ema_decay: Annotated[float, Range(ge=0, lt=1), Doc(
        "EMA of the trained weights, used by evaluation and export (0 = off; Flow-GRPO: 0.9)")] = 0.0
    ema_every: Annotated[int, Range(ge=1), Doc("optimizer steps between EMA updates (Flow-GRPO: 8)")] = 1
    ema_warmup: Annotated[bool, Doc(
        "EMA decay min((1 + s)/(10 + s), ema_decay) at optimizer step s (the released EMA of DiffusionNFT and "
        "Flow-GRPO); false: ema_decay from the first update")] = False
    ema_schedule: Annotated[Literal["plain", "flow-grpo"], Doc(
        "plain: one blend after optimizer steps ema_every, 2·ema_every, …; flow-grpo: the released Flow-GRPO "
        "loop's, ema_repeats blends with the same weights after steps ema_every − 1, 2·ema_every − 1, … "
        "(one at the step, the rest before the next optimizer step)")] = "plain"
    ema_repeats: Annotated[int, Range(ge=1), Doc(
        "blends per due step with ema_schedule = \"flow-grpo\": the released script steps its EMA once per "
        "sample batch, so its gradient accumulation (2 in the 32-GPU SD3.5 configs, 4 in GRPO-Guard's)")] = 1
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


def ema_repeats_problem(decay: float, schedule: str, repeats: int) -> UserError | None:
    """Repeated EMA blends belong to the released Flow-GRPO loop: with the plain schedule they are refused
    (by recipe validation, and again where the average is built)."""
    if decay and repeats > 1 and schedule != "flow-grpo":
        return UserError("repeated EMA blends are the released Flow-GRPO loop's", where="train.ema_repeats",
                         hint="set train.ema_schedule = \"flow-grpo\" or train.ema_repeats = 1")
    return None


@dataclass(kw_only=True)
class EvalConfig:
    """``[eval]``: fixed prompts and fixed noise, sampled deterministically with a registered solver."""

    every: Annotated[int, Range(ge=0), Doc("iterations between evaluations (0 = never; unused when every_minutes is set)")] = 10
    every_minutes: Annotated[float, Range(ge=0), Doc(
        "evaluate at every multiple of this many minutes of training time (the clock of train.time_budget, "
        "evaluations excluded), after the iteration that reaches it; 0 = count iterations (every)")] = 0.0
    steps: Annotated[int, Range(ge=0), Doc("deterministic steps (0 = the sampler's steps)")] = 0
    solver: Annotated[str, Doc("the registered solver of every step (grpo plugins list: solver)")] = "euler"
    seed: Annotated[int, Range(ge=0, le=2**63 - 1), Doc("seed of the evaluation noise (never used in training)")] = 1_000_003
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


@dataclass(frozen=True)
class PartSpec:
    """A component a recipe chose: its registered entry and its complete, validated options.

    Attributes:
        where: the recipe table that holds it (``model``, ``strategy.topology``, ``strategy.pruner.0``).
        chosen_by: who chose it: that table, or ``strategy`` for a part of the strategy's preset.
        origins: option → the recipe path that set it, where the recipe did (``strategy.split_points``
            for a short key); the others are reported under ``where``.
    """

    entry: Entry
    options: dict[str, Any]
    where: str
    chosen_by: str = ""
    origins: dict[str, str] = field(default_factory=dict)

    def path(self, option: str) -> str:
        """Where a problem with `option` is reported: the path the recipe set it at, else its table's."""
        return self.origins.get(option, f"{self.where}.{option}")

    def locate(self, error: UserError) -> UserError:
        """`error` raised by the component, at the recipe path of the option it names (a ``where``
        without a dot); an error that names a path of its own stays as it is."""
        if isinstance(error, UserErrors):
            return UserErrors([self.locate(e) for e in error.errors])
        where = error.where
        if not where:
            where = self.where
        elif "." not in where and where in self.options:
            where = self.path(where)
        elif "." not in where:
            where = f"{self.where}.{where}"
        return UserError(error.message, where=where, hint=error.hint)

    def build(self) -> Any:
        """The component, its optional members completed; its user errors at their recipe paths."""
        try:
            return instantiate(self.entry, self.options, self.where)
        except UserError as e:
            raise self.locate(e) from None

    def table(self) -> dict[str, Any]:
        """The component's table with every option filled in (``recipe.resolved.toml``)."""
        return component_table(self.entry.name, self.options)

    def record(self) -> dict[str, str]:
        """Who provided it and which table chose it (``[parts]`` of ``recipe.resolved.toml``)."""
        return {"use": self.entry.name, "provided_by": self.entry.distribution, "chosen_by": self.chosen_by or self.where}


@dataclass(frozen=True)
class RewardSpec(PartSpec):
    weight: float = 1.0
    name: str = ""

    @property
    def label(self) -> str:
        """The name its scores are logged under: ``name`` when given, else the plugin's name."""
        return self.name or self.entry.name


@dataclass(frozen=True)
class StrategySpec:
    """A strategy resolved for a recipe: its preset's parts with the recipe's changes applied."""

    entry: Entry
    topology: PartSpec
    advantage: PartSpec
    objective: PartSpec
    solver: PartSpec
    pruners: tuple[PartSpec, ...]

    @property
    def name(self) -> str:
        return self.entry.name

    def parts(self) -> list[PartSpec]:
        """Every part, in slot order (the pruners in theirs)."""
        return [self.topology, self.advantage, *self.pruners, self.objective, self.solver]

    def table(self) -> dict[str, Any]:
        """``[strategy]`` of ``recipe.resolved.toml``: every part with every option."""
        return {"use": self.entry.name, "topology": self.topology.table(), "advantage": self.advantage.table(),
                "pruner": [p.table() for p in self.pruners], "objective": self.objective.table(),
                "solver": self.solver.table()}

    def records(self) -> dict[str, Any]:
        """``[parts]``: who provided each part and which table chose it, by slot."""
        out: dict[str, Any] = {}
        for slot in SLOTS:
            out[slot] = [p.record() for p in self.pruners] if slot == "pruner" else self.single(slot).record()
        return out

    def single(self, slot: str) -> PartSpec:
        return {"topology": self.topology, "advantage": self.advantage, "objective": self.objective,
                "solver": self.solver}[slot]


@dataclass(frozen=True)
class Recipe:
    """A validated recipe, as data. ``grpo.core.components.build`` builds what it names."""

    source: Path | None
    model: PartSpec
    strategy: StrategySpec
    sampler: PartSpec
    rewards: list[RewardSpec]
    prompts: PartSpec
    backend: PartSpec
    eval_solver: PartSpec
    train: TrainConfig
    eval: EvalConfig
    logging: LoggingConfig
    plugins: PluginsConfig
    solvers: Mapping[str, Entry] = field(default_factory=dict)  # every registered solver, for a plan that names one

    def to_dict(self) -> dict[str, Any]:
        """All tables with every default filled in (``recipe.resolved.toml``)."""
        return {
            "model": self.model.table(),
            "strategy": self.strategy.table(),
            "sampler": self.sampler.table(),
            "reward": [{**r.table(), "weight": r.weight, **({"name": r.name} if r.name else {})} for r in self.rewards],
            "prompts": self.prompts.table(),
            "train": {k: toml_value(v) for k, v in asdict(self.train).items()},
            "eval": asdict(self.eval),
            "backend": self.backend.table(),
            "logging": asdict(self.logging),
            "plugins": asdict(self.plugins),
        }

    def provenance(self) -> dict[str, str]:
        """``kind.name`` → the distribution that provided it, for every component and part."""
        comps = [self.model, self.sampler, self.prompts, self.backend, self.eval_solver, *self.rewards,
                 *self.strategy.parts()]
        out = {f"strategy.{self.strategy.name}": self.strategy.entry.distribution}
        out.update({f"{c.entry.kind}.{c.entry.name}": c.entry.distribution for c in comps})
        return out
