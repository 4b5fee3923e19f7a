"""Everything a run is built from, built once and checked before any weight is read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .abilities import complete
from .backend import Backend
from .errors import UserError
from .policy import Conditioning, Policy
from .preflight import check_paths
from .recipe import Recipe
from .sampler import Sampler, check_noise_block
from .scoring import Rewards
from .strategy import StrategyParts
from .tree import TreePlan


@dataclass
class Components:
    """The run's components. The optional members of each protocol are filled in
    (``grpo.core.abilities``), so every one can be called directly."""

    policy: Policy
    sampler: Sampler
    parts: StrategyParts
    plan: TreePlan
    rewards: Rewards
    train_prompts: list[str]
    eval_sets: dict[str, list[str]]
    backend: Backend


def build(recipe: Recipe) -> Components:
    """Instantiate every component; the cheap ones first, so that their errors come before weights load."""
    check_paths(recipe)  # every missing file at once, before anything is read
    source = recipe.prompts.create()
    train_prompts = source.train_prompts()
    if not train_prompts:
        raise UserError("the prompt source gives no training prompts", where="prompts")
    eval_sets = source.eval_sets()
    sampler = complete(recipe.sampler_instance, "sampler")
    parts = recipe.composition.parts
    plan = parts.topology.plan(sampler.steps)
    if recipe.noise_grid is not None:  # known from the model's options: checked before weights load
        check_noise_block(recipe.noise_grid, sampler.noise_block)
    rewards = Rewards(recipe.rewards, [complete(r.create(), "reward") for r in recipe.rewards],
                      recipe.train.reward_aggregation)
    backend = complete(recipe.backend.create(), "backend")
    policy = complete(recipe.model.create(), "policy")
    check_noise_block(policy.noise_grid(), sampler.noise_block)
    for spec, model in zip(recipe.rewards, rewards.models, strict=True):
        if model.fps == 0 and policy.fps:
            model.fps = policy.fps  # a video reward sees frames at the model's real fps
        if model.media != policy.media:
            raise UserError(f"reward {spec.label!r} scores {model.media}s but the model makes {policy.media}s",
                            where="reward", hint="choose a reward for the model's media")
    return Components(policy, sampler, parts, plan, rewards, train_prompts, eval_sets, backend)


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
