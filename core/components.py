"""Everything a run is built from, built once from a ``Recipe`` and checked before any weight is read.

``build_parts`` builds the cheap components (the sampler, the strategy's parts, the backend) and
checks them against each other; ``build`` adds the prompts, the rewards and the policy. Every user
error is reported at the recipe path that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .advantage import AdvantageEstimator
from .backend import Backend
from .config import PartSpec, Recipe, StrategySpec
from .errors import UserError, UserErrors
from .objective import Keep, LossContext, Objective, UnitContext, UnitLoss, Units
from .policy import Conditioning, Policy
from .preflight import check_paths
from .pruner import PruneContext, Pruner
from .registry import Entry, attributed, instantiate
from .sampler import Sampler, check_noise_block, follow_model_grid
from .scoring import Rewards
from .solver import Solver
from .topology import TreeTopology
from .tree import Advantages, EdgeSet, Rollout, TreePlan


class Solvers(Mapping[str, Solver]):
    """The rollout's solvers by the names a plan gives its steps: ``""`` is the strategy's own
    (``[strategy.solver]``); any other registered name is built with its defaults on first use."""

    def __init__(self, default: Solver, entries: Mapping[str, Entry]) -> None:
        self._built: dict[str, Solver] = {"": default}
        self._entries = entries

    def __getitem__(self, name: str) -> Solver:
        if name not in self._built:
            if name not in self._entries:
                raise KeyError(name)
            self._built[name] = instantiate(self._entries[name], {}, f"solver {name!r}")
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter({"", *self._entries})

    def __len__(self) -> int:
        return len({"", *self._entries})


@dataclass
class Parts:
    """The strategy's parts and the sampler, built; each part's spec names it in errors."""

    spec: StrategySpec
    sampler: Sampler
    topology: TreeTopology
    advantage: AdvantageEstimator
    pruners: list[Pruner]
    objective: Objective
    solvers: Solvers
    backend: Backend
    keep: Keep = field(default_factory=Keep)

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        """The tree of an iteration, every step deterministic when the sampler is."""
        with located(self.spec.topology, "plan()"):
            plan = self.topology.plan(steps, iteration)
        return plan if self.sampler.stochastic else plan.deterministic()

    def prune(self, rollout: Rollout, advantages: Advantages, ctx: PruneContext) -> EdgeSet:
        """The trained edges: every stochastic edge, narrowed by each pruner in order."""
        edges = EdgeSet.all_stochastic(rollout)
        for pruner, spec in zip(self.pruners, self.spec.pruners, strict=True):
            with attributed(spec.entry, "pruning"):
                edges = pruner(rollout, advantages, edges, ctx)
        return edges

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> Units:
        """The objective's units of the trained edges (a failure names its plugin)."""
        with attributed(self.spec.objective.entry, "units()"):
            return self.objective.units(rollout, advantages, edges, ctx)

    def placeholder(self, rollout: Rollout, ctx: UnitContext) -> Callable[[], Units]:
        """Units of every stochastic edge with zero advantages, made on demand: the update's zero-weight
        micro-batch of a rank that trains no unit of an optimizer step."""
        zero = Advantages([torch.zeros(s.shape[0]) for s in rollout.states[1:]])
        return lambda: self.units(rollout, zero, EdgeSet.all_stochastic(rollout), ctx)

    @property
    def learning_rule(self) -> Objective:
        """The objective as the update calls it: a failure inside its loss names its plugin."""
        return _Attributed(self.objective, self.spec.objective.entry)


class _Attributed:
    """An objective's loss and metrics, its failures attributed to its plugin."""

    def __init__(self, objective: Objective, entry: Entry) -> None:
        self.objective, self.entry, self.metrics = objective, entry, objective.metrics

    def loss(self, units: Units, ctx: LossContext) -> UnitLoss:
        with attributed(self.entry, "loss()"):
            return self.objective.loss(units, ctx)


@contextmanager
def located(spec: PartSpec, doing: str) -> Iterator[None]:
    """A user error inside a part, at the recipe path of the option it names; any other failure
    attributed to the part's plugin."""
    try:
        with attributed(spec.entry, doing):
            yield
    except UserError as e:
        raise spec.locate(e) from None


def _build(spec: PartSpec, errors: list[UserError]) -> Any:
    try:
        return spec.build()
    except UserError as e:
        errors.extend(e.errors if isinstance(e, UserErrors) else [e])
        return None


def build_parts(recipe: Recipe) -> Parts:
    """The sampler, the backend and every part of the strategy, built once and checked against each
    other (no weights are read); every problem at once."""
    errors: list[UserError] = []
    s = recipe.strategy
    built = [_build(spec, errors) for spec in (recipe.sampler, recipe.backend, s.topology, s.advantage, s.objective,
                                               s.solver, *s.pruners)]
    if errors:
        raise UserErrors(errors)
    sampler, backend, topology, advantage, objective, solver, *pruners = built
    keep = objective.keep.union(Keep(log_prob=advantage.needs_log_prob))
    parts = Parts(s, sampler, topology, advantage, pruners, objective, Solvers(solver, recipe.solvers), backend, keep)
    errors += _check_parts(recipe, parts)
    if errors:
        raise UserErrors(errors)
    return parts


def _check_parts(recipe: Recipe, parts: Parts) -> list[UserError]:
    """The tree fits the sampler, the objective and the pruners, its solvers exist, and the
    sampler's noise tiles the model's latent when its options tell the latent's shape."""
    s, sampler, errors = recipe.strategy, parts.sampler, []
    if not sampler.stochastic:
        errors += _deterministic_sampler(recipe, parts)
    try:
        plan = parts.plan(sampler.steps)
    except UserError as e:
        return [*errors, e]
    if not sampler.stochastic and plan.split_steps:
        errors.append(UserError(
            f"the {s.topology.entry.name!r} tree splits at steps {list(plan.split_steps)}, but sampler "
            f"{recipe.sampler.entry.name!r} is deterministic: the children of a split would be identical",
            where="sampler.use", hint="use a tree of independent chains ([strategy.topology] use = \"chains\"), "
                                      "or a stochastic sampler"))
    checks = [(s.objective, "check_plan()", lambda: parts.objective.check_plan(plan, sampler))]
    checks += [(spec, "check_plan()", lambda p=pruner: p.check_plan(plan)) for spec, pruner in zip(s.pruners, parts.pruners,
                                                                                                     strict=True)]
    for spec, doing, check in checks:
        try:
            with located(spec, doing):
                check()
        except UserError as e:
            errors.append(e)
    unknown = sorted({name for name in plan.solver if name and name not in recipe.solvers})
    if unknown:
        errors.append(UserError(f"the tree names the solver {unknown[0]!r}, which no installed plugin registers",
                                where=s.topology.where, hint="registered solvers: " + ", ".join(sorted(recipe.solvers))))
    grid = planned_noise_grid(recipe.model)
    if grid is not None:
        try:
            check_noise_block(grid, sampler.noise_block)
        except UserError as e:
            errors.append(e)
    return errors + _model_grid(recipe, sampler)


def _model_grid(recipe: Recipe, sampler: Sampler) -> list[UserError]:
    """The model's σ grid on the sampler, where its options and configs tell it before weights load
    (``sigma_schedule_for``); the loaded model's is put on again in ``build``."""
    planned = recipe.model.entry.sigma_schedule_for
    try:
        follow_model_grid(sampler, planned(recipe.model.options) if planned else None, recipe.sampler.entry.name)
    except UserError as e:
        return [e]
    return []


def _deterministic_sampler(recipe: Recipe, parts: Parts) -> list[UserError]:
    """What a deterministic sampler cannot serve: per-step densities."""
    errors = []
    name = recipe.sampler.entry.name
    if parts.objective.keep.log_prob:
        errors.append(UserError(
            f"objective {recipe.strategy.objective.entry.name!r} trains on per-step log-probabilities, which the "
            f"deterministic sampler {name!r} does not have", where="sampler.use",
            hint="use a stochastic sampler (dance-sde, flow-sde, cps), or an objective on final samples"))
    if parts.advantage.needs_log_prob:
        errors.append(UserError(
            f"advantage {recipe.strategy.advantage.entry.name!r} weighs children by their log-probabilities, which "
            f"the deterministic sampler {name!r} does not have", where=recipe.strategy.advantage.where,
            hint="use a stochastic sampler, or mean fusion"))
    return errors


def planned_noise_grid(model: PartSpec) -> tuple[int, ...] | None:
    """The grid a model's exploration noise tiles, known before its weights are read: from its
    registration's ``noise_grid_for(options)`` (None: not known without loading)."""
    plan = model.entry.noise_grid_for
    shape = plan(model.options) if plan is not None else None
    return tuple(shape) if shape is not None else None


@dataclass
class Components:
    """The run's components, each built once with its optional members completed, so every member
    can be called directly."""

    policy: Policy
    parts: Parts
    plan: TreePlan
    rewards: Rewards
    train_prompts: list[str]
    eval_sets: dict[str, list[str]]
    eval_solver: Solver

    @property
    def sampler(self) -> Sampler:
        return self.parts.sampler

    @property
    def backend(self) -> Backend:
        return self.parts.backend


def build(recipe: Recipe) -> Components:
    """Instantiate every component; the cheap ones first, so that their errors come before weights load."""
    parts = build_parts(recipe)
    check_paths(recipe)  # every missing file at once, before anything is read
    source = recipe.prompts.build()
    train_prompts = source.train_prompts()
    if not train_prompts:
        raise UserError("the prompt source gives no training prompts", where="prompts")
    eval_sets = source.eval_sets()
    plan = parts.plan(parts.sampler.steps)
    rewards = Rewards(recipe.rewards, [r.build() for r in recipe.rewards], recipe.train.reward_aggregation)
    for model in rewards.models:
        model.check_prompts(train_prompts, "prompts")
        for name, prompts in eval_sets.items():
            model.check_prompts(prompts, f"prompts (evaluation set {name!r})")
    policy = recipe.model.build()
    check_noise_block(policy.noise_grid(), parts.sampler.noise_block)
    follow_model_grid(parts.sampler, policy.sigma_schedule(), recipe.sampler.entry.name)
    for spec, model in zip(recipe.rewards, rewards.models, strict=True):
        if model.fps == 0 and policy.fps:
            model.fps = policy.fps  # a video reward sees frames at the model's real fps
        if model.media != policy.media:
            raise UserError(f"reward {spec.label!r} scores {model.media}s but the model makes {policy.media}s",
                            where="reward", hint="choose a reward for the model's media")
    return Components(policy, parts, plan, rewards, train_prompts, eval_sets, recipe.eval_solver.build())


def check_world(recipe: Recipe, launched: int, ranks: int) -> None:
    """Refuse a run that `launched` ranks cannot share: a backend that runs `ranks` ≠ `launched`
    processes, or prompts per iteration that do not split into whole trees per rank."""
    if launched > 1 and ranks != launched:
        raise UserError(f"started as {launched} ranks, but backend {recipe.backend.entry.name!r} runs in one process",
                        where="backend.use", hint="use a backend that runs several processes ('torch' or 'deepspeed'), or run one process")
    per = recipe.train.prompts_per_iteration
    if per % ranks:
        raise UserError(f"{per} prompts per iteration do not split evenly over {ranks} ranks",
                        where="train.prompts_per_iteration", hint=f"use a multiple of {ranks}: each rank samples whole trees")


class PromptCache:
    """Prompt embeddings, computed once per distinct prompt."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._cache: dict[str, Conditioning] = {}

    def encode(self, prompts: list[str]) -> Conditioning:
        """Embeddings of `prompts`, in order (repeats allowed)."""
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            cond = self.policy.encode_prompts(missing)
            for i, p in enumerate(missing):
                self._cache[p] = cond.select(torch.tensor([i]))
        first = self._cache[prompts[0]]
        values = {}
        for name, value in vars(first).items():
            values[name] = (torch.cat([vars(self._cache[p])[name] for p in prompts]) if isinstance(value, torch.Tensor)
                            else value)
        return type(first)(**values)
