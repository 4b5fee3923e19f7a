"""Exact per-tree cost of one iteration, before running it (``grpo plan``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import streams
from .components import Parts, build_parts
from .config import Recipe
from .objective import UnitContext
from .pruner import PruneContext
from .rollout import plan_sigmas
from .tree import Advantages, Rollout, TreePlan


@dataclass
class CostReport:
    plan: TreePlan
    sigmas: list[float]
    trained_per_step: list[int]
    parts: dict = field(default_factory=dict)
    unit: str = "edges"
    units_per_tree: int = 0
    solver: str = "euler"  # the solver of the deterministic steps the plan names none for

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
            "chain_forwards_per_tree": p.leaves * p.steps,  # the same leaves as chains that share nothing
            "trained_edges_per_leaf": self.trained_edges / p.leaves,
            "unit": self.unit,
            "units_per_tree": self.units_per_tree,
            "per_step": [
                {
                    "step": k,
                    "sigma": self.sigmas[k],
                    "sigma_next": self.sigmas[k + 1],
                    "live_nodes": p.live(k),
                    "branch": p.branch[k],
                    "noise_scale": p.noise_scale[k],
                    "mode": "SDE" if p.stochastic[k] else (p.solver[k] if p.solver and p.solver[k] else self.solver),
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


def cost(recipe: Recipe, iteration: int = 0, parts: Parts | None = None) -> CostReport:
    """Trained edges after every pruner at `iteration` (advantages taken as zero), and the objective's
    units of one tree; `parts` as ``build_parts`` made them (built here when not given)."""
    parts = parts or build_parts(recipe)
    plan = parts.plan(parts.sampler.steps, iteration)
    sigmas = plan_sigmas(parts.sampler, plan)
    ro = skeleton(plan, sigmas)
    adv = Advantages([torch.zeros(plan.live(k + 1)) for k in range(plan.steps)])
    ctx = PruneContext(iteration, recipe.train.iterations, streams.pruner_generator(recipe.train.seed, iteration, 0))
    edges = parts.prune(ro, adv, ctx)
    units = parts.units(ro, adv, edges, UnitContext(iteration, streams.unit_generators(recipe.train.seed, iteration,
                                                                                         range(1))))
    records = {slot: rec for slot, rec in recipe.strategy.records().items()}
    tables = recipe.strategy.table()
    for slot, rec in records.items():  # each part with its options, who provided it and who chose it
        if slot == "pruner":
            records[slot] = [{**table, **r} for table, r in zip(tables["pruner"], rec, strict=True)]
        else:
            records[slot] = {**tables[slot], **rec}
    return CostReport(plan, sigmas.tolist(), edges.per_step(), records, parts.objective.unit, len(units),
                      recipe.strategy.solver.entry.name)
