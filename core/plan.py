"""Exact per-tree cost of one iteration, before running it (``grpo plan``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import streams
from .pruner import PruneContext
from .recipe import Recipe
from .rollout import plan_sigmas
from .tree import Advantages, Rollout, TreePlan


@dataclass
class CostReport:
    plan: TreePlan
    sigmas: list[float]
    trained_per_step: list[int]
    parts: dict = field(default_factory=dict)

    @property
    def trained_edges(self) -> int:
        return sum(self.trained_per_step)

    def to_dict(self) -> dict:
        p = self.plan
        return {
            "parts": self.parts,
            "steps": p.steps,
            "split_steps": list(p.split_steps),
            "roots_per_tree": p.roots,
            "leaves_per_tree": p.leaves,
            "rollout_forwards_per_tree": p.rollout_forwards,
            "edges_per_tree": p.edges,
            "stochastic_edges_per_tree": p.stochastic_edges,
            "trained_edges_per_tree": self.trained_edges,
            "rollout_forwards_per_leaf": p.rollout_forwards / p.leaves,
            "trained_edges_per_leaf": self.trained_edges / p.leaves,
            "per_step": [
                {
                    "step": k,
                    "sigma": self.sigmas[k],
                    "sigma_next": self.sigmas[k + 1],
                    "live_nodes": p.live(k),
                    "branch": p.branch[k],
                    "noise_scale": p.noise_scale[k],
                    "mode": "SDE" if p.stochastic[k] else ("DPM" if p.solver and p.solver[k] == "dpm" else "ODE"),
                    "trained_edges": self.trained_per_step[k],
                }
                for k in range(p.steps)
            ],
        }


def skeleton(plan: TreePlan, sigmas: torch.Tensor, trees: int = 1) -> Rollout:
    """A rollout of `trees` trees with the plan's structure and empty states (cost accounting, tests)."""
    live = [trees * plan.live(d) for d in range(plan.steps + 1)]
    states = [torch.zeros(n, 0) for n in live]
    parents = [torch.arange(live[k + 1]) // plan.branch[k] for k in range(plan.steps)]
    tree_ids = [torch.arange(n) // plan.live(d) for d, n in enumerate(live)]
    log_probs = [torch.zeros(live[k + 1]) for k in range(plan.steps)]
    return Rollout(plan, sigmas, states, parents, tree_ids, log_probs, states[-1])


def cost(recipe: Recipe, iteration: int = 0) -> CostReport:
    """Trained edges after every pruner at `iteration` (advantages taken as zero)."""
    sampler = recipe.sampler_instance
    parts = recipe.composition.parts
    plan = parts.topology.plan(sampler.steps, iteration)
    sigmas = plan_sigmas(sampler, plan)
    ro = skeleton(plan, sigmas)
    adv = Advantages([torch.zeros(plan.live(k + 1)) for k in range(plan.steps)])
    ctx = PruneContext(iteration, recipe.train.iterations, streams.pruner_generator(recipe.train.seed, iteration, 0))
    edges = recipe.composition.prune(ro, adv, ctx)
    return CostReport(plan, sigmas.tolist(), edges.per_step(), recipe.composition.to_dict())
