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


def tree_generators(n: int, base: int) -> list[torch.Generator]:
    """One seeded generator per tree, as the engine hands them to ``Objective.units``."""
    return [torch.Generator().manual_seed(base + t) for t in range(n)]


def leaves_only_rollout(group_size: int, steps: int):
    """Two prompts of `group_size` independent chains over `steps` deterministic steps, keeping only the
    leaves: (rollout, conditioning)."""
    from grpo.core.objective import Keep
    from grpo.plugins.samplers.flow import ODE
    from grpo.plugins.trees.topologies import Chains
    from grpo.testing import tiny_rollout

    ro, cond, _ = tiny_rollout(Chains(group_size=group_size).plan(steps).deterministic(), sampler=ODE(steps=steps),
                               keep=Keep())
    return ro, cond


def perturbed(policy, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """The denoiser's weights, each moved by `scale`·N(0, 1) from a generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    return {n: (p.detach() + scale * torch.randn(p.shape, generator=g)) for n, p in policy.denoiser.named_parameters()}


class TwoCopies:
    """A tiny policy at weights θ (its base perturbed, the base kept as its reference) and the objective's
    lagged copy at another perturbation; and the same three as separate models, for a formula written
    out on them."""

    def __init__(self, lag, scale: float = 0.02) -> None:
        from grpo.core.ema import LaggedWeights
        from grpo.testing import tiny_policy

        self.policy = tiny_policy()
        self.policy.snapshot_reference()
        self.theta, self.lagged_state = perturbed(self.policy, scale, 1), perturbed(self.policy, scale, 2)
        self.policy.denoiser.load_state_dict(self.theta, strict=False)
        params = self.policy.trainable_parameters()
        self.names = {id(p): n for n, p in self.policy.denoiser.named_parameters()}
        self.lagged = LaggedWeights(params, [self.names[id(p)] for p in params], lag)
        self.lagged.shadow = [self.lagged_state[self.names[id(p)]].float().clone() for p in params]

    def gradient(self) -> dict[str, torch.Tensor]:
        """The trained weights' gradients, by name."""
        return {self.names[id(p)]: p.grad.clone() for p in self.policy.trainable_parameters()}

    def separate(self) -> tuple:
        """(θ, the lagged copy, the base) as three fresh tiny policies."""
        from grpo.testing import tiny_policy

        models = []
        for state in (self.theta, self.lagged_state, None):
            model = tiny_policy()
            if state is not None:
                model.denoiser.load_state_dict(state, strict=False)
            models.append(model)
        return tuple(models)


def gradient_gap(ours: dict[str, torch.Tensor], model) -> float:
    """|g_ours − g_model| / |g_model| over the model's parameters with gradients (the same names)."""
    theirs = {n: p.grad for n, p in model.denoiser.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys()
    flat = lambda d: torch.cat([d[k].flatten() for k in sorted(d)])  # noqa: E731
    return float((flat(ours) - flat(theirs)).norm() / flat(theirs).norm())


def shapes_iteration_overrides(model_dir, *, group_size: int = 3, steps: int = 8, micro_batch: int = 8,
                               iterations: int = 1) -> list[str]:
    """A shapes recipe on the tiny model for a few iterations of two prompts, checkpointed each, quiet."""
    return [f"model.path='{model_dir}'", f"train.iterations={iterations}", "train.prompts_per_iteration=2",
            f"strategy.group_size={group_size}", f"sampler.steps={steps}", f"train.micro_batch={micro_batch}",
            "train.checkpoint_every=1", "eval.every=0", "eval.every_minutes=0", "logging.tensorboard=false",
            "logging.progress=false"]
