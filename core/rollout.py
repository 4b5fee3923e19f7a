"""Batched frontier rollout: every live node of every tree at a step is one (micro-batched) forward."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

from .objective import Keep
from .policy import Conditioning, Policy
from .sampler import Sampler, draw_noise, shifted_sigmas
from .solver import Previous, Solver
from .tree import Rollout, TreePlan

SplitLogProb = Literal["nominal", "scaled"]


def chunked(n: int, size: int) -> list[slice]:
    """Slices covering range(n) in pieces of at most `size`."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def batched_velocity(
    policy: Policy, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, tree: torch.Tensor, max_batch: int
) -> torch.Tensor:
    """v for N nodes in micro-batches of at most `max_batch`; node j uses the prompt ``tree[j]``."""
    outs = [
        policy.velocity(x[s], sigma[s], cond.select(tree[s])).float()
        for s in chunked(x.shape[0], max_batch)
    ]
    return torch.cat(outs)


def edge_log_prob(
    sampler: Sampler,
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    scale: torch.Tensor,
    to_grid: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob (N,), mean, std (N,)) of stored transitions x → x_next; std is multiplied by `scale`.
    The density is taken on the policy's noise grid (`to_grid`), where the noise was drawn."""
    mean, std = sampler.step(x, v, sigma, sigma_next)
    std = std * scale
    return sampler.log_prob(to_grid(x_next), to_grid(mean), std), mean, std


def plan_sigmas(sampler: Sampler, plan: TreePlan) -> torch.Tensor:
    """(steps + 1,) fp32 σ of the plan's steps: the sampler's grid, or the plan's own times under the
    sampler's shift."""
    sigmas = shifted_sigmas(plan.times, sampler.shift) if plan.times else sampler.sigmas()
    if sigmas.shape[0] != plan.steps + 1:
        raise ValueError(f"a plan of {plan.steps} steps on a grid of {sigmas.shape[0] - 1}")
    return sigmas


def _transition(sampler: Sampler, plan: TreePlan, k: int, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                sigma_next: torch.Tensor, noise: Callable[[int], torch.Tensor], keep: Keep,
                to_grid: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stochastic step k for the frontier `x`: (children, their log-probabilities (fp32; NaN unless
    kept), each child's parent, the children's mean μ). `noise(b)` draws the children's standard
    normal noise, in latent layout."""
    n, b, lam = x.shape[0], plan.branch[k], plan.noise_scale[k]
    parent = torch.arange(n).repeat_interleave(b)
    mean, std = sampler.step(x, v, sigma, sigma_next)
    on = parent.to(x.device)
    mean_c, std_c = mean[on], std[on]
    x_next = mean_c + (lam * std_c).view(-1, *([1] * (x.dim() - 1))) * noise(b).to(x.device)
    if not keep.log_prob:
        return x_next, torch.full((n * b,), float("nan")), parent, mean_c
    eval_std = std_c * (lam if keep.split_logprob == "scaled" else 1.0)
    return x_next, sampler.log_prob(to_grid(x_next), to_grid(mean_c), eval_std), parent, mean_c


def _solver_transition(solver: Solver, x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                       sigma_next: torch.Tensor, history: Previous | None, up: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic step: (children, NaN log-probabilities, parents, no means). `history` is the
    previous step's (x̂0, v, σ) per node of the previous frontier, `up` each node's parent there."""
    previous = None
    if history is not None and up is not None and solver.uses_previous:
        on = up.to(x.device)
        previous = Previous(history.x0[on], history.v[on], history.sigma[up].to(x.device))
    n = x.shape[0]
    return (solver.step(x, v, x0, sigma, sigma_next, previous).float(), torch.full((n,), float("nan")),
            torch.arange(n), x.new_zeros(0))


def _roots(plan: TreePlan, num_trees: int, shape: tuple[int, ...],
           generator: torch.Generator | Sequence[torch.Generator], init_noise: torch.Tensor | None,
           device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """([depth-0 states], [their trees]): the given initial noise, or `plan.roots` draws per tree."""
    if init_noise is None:
        init_noise = draw_noise(torch.full((num_trees,), plan.roots, dtype=torch.long), shape, generator)
    if init_noise.shape[0] != num_trees * plan.roots:
        raise ValueError(f"{init_noise.shape[0]} initial noises for {num_trees} trees of {plan.roots} root(s)")
    return [init_noise.to(device, torch.float32)], [torch.arange(num_trees).repeat_interleave(plan.roots)]


def _noise_drawer(policy: Policy, sampler: Sampler, grid: tuple[int, ...],
                  generator: torch.Generator | Sequence[torch.Generator], tree: torch.Tensor,
                  num_trees: int) -> Callable[[int], torch.Tensor]:
    """`draw(b)`: standard normal noise for b children of every node of the frontier (whose trees
    are `tree`), drawn on the policy's noise grid, tiles and all, in latent layout."""
    def draw(b: int) -> torch.Tensor:
        counts = torch.bincount(tree, minlength=num_trees) * b
        return policy.from_noise_grid(sampler.draw_noise(counts, grid, generator))
    return draw


@torch.no_grad()
def rollout(
    policy: Policy,
    sampler: Sampler,
    plan: TreePlan,
    cond: Conditioning,
    *,
    generator: torch.Generator | Sequence[torch.Generator],
    max_batch: int,
    solvers: Mapping[str, Solver],
    init_noise: torch.Tensor | None = None,
    keep: Keep = Keep(log_prob=True, states=True),
    on_step: Callable[[int], None] | None = None,
) -> Rollout:
    """Sample one tree per prompt of `cond`.

    Noise is drawn on the CPU from `generator` in node order, so the result does not depend on
    `max_batch`. Children of a node are contiguous in the next frontier. With one generator per
    tree, each tree's noise comes from its own generator: a tree is then the same whichever other
    trees are sampled with it (how ranks share a batch). A step is stochastic when the plan says so
    and the sampler is; every other step is taken by ``solvers[plan.solver[k]]`` (``solvers[""]``,
    the default, where the plan names none). `policy` and `sampler` are built components (their
    optional members completed).

    Args:
        cond: embeddings of P prompts (one tree each).
        keep: what to keep besides the leaves (``grpo.core.objective.Keep``).
        init_noise: optional (P · plan.roots, *latent) root states (evaluation uses fixed noise; the engine passes one
            noise for every tree when `train.init_same_noise` is on).
    """
    device = next(policy.denoiser.parameters()).device
    num_trees = int(next(t for t in vars(cond).values() if isinstance(t, torch.Tensor)).shape[0])
    sigmas, shape, grid = plan_sigmas(sampler, plan), tuple(policy.latent_shape), policy.noise_grid()
    states, trees = _roots(plan, num_trees, shape, generator, init_noise, device)
    out = Rollout(plan, sigmas, states, [], trees, [], states[0], [])
    history: Previous | None = None  # the previous step's (x̂0, v, σ), for a multistep solver
    for k in range(plan.steps):
        x, tree = states[k], trees[k]
        sigma, sigma_next = (sigmas[i].expand(x.shape[0]).to(device) for i in (k, k + 1))
        v = batched_velocity(policy, x, sigma, cond, tree, max_batch)
        x0 = x - sigma.view(-1, *([1] * len(shape))) * v
        if plan.stochastic[k] and sampler.stochastic:
            draw = _noise_drawer(policy, sampler, grid, generator, tree, num_trees)
            x_next, log_prob, parent, mean = _transition(sampler, plan, k, x, v, sigma, sigma_next, draw, keep,
                                                         policy.to_noise_grid)
        else:
            if plan.branch[k] != 1:
                raise ValueError(f"step {k} splits but is deterministic; split steps must be stochastic")
            solver = solvers[plan.solver[k] if plan.solver else ""]
            x_next, log_prob, parent, mean = _solver_transition(solver, x, v, x0, sigma, sigma_next, history,
                                                                out.parent[-1] if out.parent else None)
        history = Previous(x0, v, sigma.cpu())
        if k == plan.steps - 1:
            out.final = x0[parent.to(device)]
        _record(out, keep, k, x_next, log_prob, parent, mean)
        if on_step is not None:
            on_step(k)
    if not keep.states:
        states[-1] = states[-1].new_zeros(states[-1].shape[0], 0)
    return out


def _record(out: Rollout, keep: Keep, k: int, x_next: torch.Tensor, log_prob: torch.Tensor, parent: torch.Tensor,
            mean: torch.Tensor) -> None:
    """Step k's children, their parents, trees and log-probabilities (and means) into `out`; the
    frontier it left becomes a (N, 0) placeholder unless states are kept."""
    if not keep.states:
        out.states[k] = out.states[k].new_zeros(out.states[k].shape[0], 0)
    out.states.append(x_next.float())
    out.parent.append(parent)
    out.tree.append(out.tree[k][parent])
    out.log_prob.append(log_prob.float().cpu())
    if keep.means:
        out.means.append(mean.float())
