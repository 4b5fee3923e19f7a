"""Helpers the tests share: one update of the clipped-ratio objective on a rollout, as the engine runs it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from grpo.core.dist import Group
from grpo.core.edges import EdgeUnits
from grpo.core.objective import LossContext
from grpo.core.tree import Advantages, EdgeSet
from grpo.core.update import UpdateConfig, UpdateStats, update
from grpo.plugins.objectives.clipped_ratio import ClippedRatio


def clipped_update(policy, sampler, backend, rollout, cond, units: EdgeUnits, *, clip_range: float = 1e-3,
                   config: UpdateConfig | None = None, generator: torch.Generator | None = None,
                   group: Group | None = None, on_optimizer_step: Callable[[], None] | None = None,
                   **objective) -> UpdateStats:
    """The engine's update of `units` with the clipped-ratio objective (its other options in `objective`)."""
    zero = Advantages([torch.zeros(s.shape[0]) for s in rollout.states[1:]])
    return update(ClippedRatio(clip_range=clip_range, **objective), LossContext(policy, sampler, rollout, cond),
                  backend, units, config or UpdateConfig(optimizer_steps=1, epochs=1, micro_batch=4),
                  generator or torch.Generator().manual_seed(0),
                  placeholder=lambda: EdgeUnits.gather(rollout, zero, EdgeSet.all_stochastic(rollout)),
                  group=group, on_optimizer_step=on_optimizer_step)


def solvers() -> dict:
    """The default solver (Euler) and the registered ones a plan may name, built."""
    from grpo.core.registry import complete
    from grpo.plugins.solvers.solvers import DPMSolverPP, Euler

    return {"": complete(Euler(), "solver"), "euler": complete(Euler(), "solver"),
            "dpm-solver++": complete(DPMSolverPP(), "solver")}


def sample(policy, sampler, plan, cond, *, split_logprob: str = "nominal", keep_means: bool = False, **kwargs):
    """``rollout`` as the engine calls it for the clipped ratio: components completed, everything kept."""
    from grpo.core.objective import Keep
    from grpo.core.registry import complete
    from grpo.core.rollout import rollout

    keep = Keep(log_prob=True, means=keep_means, states=True, split_logprob=split_logprob)  # type: ignore[arg-type]
    return rollout(complete(policy, "model"), complete(sampler, "sampler"), plan, cond, solvers=solvers(), keep=keep,
                   **kwargs)


def log_probs(policy, sampler, rollout, cond, units: EdgeUnits, split_logprob: str = "nominal") -> torch.Tensor:
    """(E,) the stored edges' log-probabilities under the current policy."""
    from grpo.core.edges import reevaluate
    from grpo.core.registry import complete

    return reevaluate(policy, complete(sampler, "sampler"), rollout, cond, units, split_logprob).log_prob  # type: ignore[arg-type]
