"""Batched frontier rollout: every live node of every tree at a step is one (micro-batched) forward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from .abilities import complete
from .policy import Conditioning, Policy
from .sampler import Sampler, dpm_solver_step, draw_noise, euler_step, shifted_sigmas
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
    sampler = complete(sampler, "sampler")
    mean, std = sampler.step(x, v, sigma, sigma_next)
    std = std * scale
    return sampler.log_prob(to_grid(x_next), to_grid(mean), std), mean, std


def plan_sigmas(sampler: Sampler, plan: TreePlan) -> torch.Tensor:
    """(steps + 1,) fp32 σ of the plan's steps: the sampler's grid, or the plan's own times under the
    sampler's shift."""
    sampler = complete(sampler, "sampler")
    sigmas = shifted_sigmas(plan.times, sampler.shift) if plan.times else sampler.sigmas()
    if sigmas.shape[0] != plan.steps + 1:
        raise ValueError(f"a plan of {plan.steps} steps on a grid of {sigmas.shape[0] - 1}")
    return sigmas


def _transition(sampler: Sampler, plan: TreePlan, k: int, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                sigma_next: torch.Tensor, noise: Callable[[int], torch.Tensor], split_logprob: SplitLogProb,
                to_grid: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step k for the frontier `x`: (children, their log-probabilities (fp32, NaN for ODE steps),
    each child's parent, the children's mean μ (empty for ODE steps)). `noise(b)` draws the children's standard normal noise, in latent layout."""
    n, b, lam = x.shape[0], plan.branch[k], plan.noise_scale[k]
    parent = torch.arange(n).repeat_interleave(b)
    if not plan.stochastic[k]:
        if b != 1:
            raise ValueError(f"step {k} splits but is deterministic; split steps must be stochastic")
        return euler_step(x, v, sigma, sigma_next), torch.full((n,), float("nan")), parent, x.new_zeros(0)
    mean, std = sampler.step(x, v, sigma, sigma_next)
    on = parent.to(x.device)
    mean_c, std_c = mean[on], std[on]
    x_next = mean_c + (lam * std_c).view(-1, *([1] * (x.dim() - 1))) * noise(b).to(x.device)
    eval_std = std_c * (lam if split_logprob == "scaled" else 1.0)
    return x_next, sampler.log_prob(to_grid(x_next), to_grid(mean_c), eval_std), parent, mean_c


def _dpm_transition(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                    history: tuple[torch.Tensor, torch.Tensor] | None,
                    parents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A DPM-Solver++ ODE step: (children, NaN log-probabilities, parents, no means). `history` is the previous
    step's (x̂0, σ) per node of the previous frontier; each node sees its parent's."""
    before: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    if history is not None:
        up = parents[-1]
        before = (history[0][up.to(x.device)], history[1][up].to(x.device))
    n = x.shape[0]
    return (dpm_solver_step(x, x0, sigma, sigma_next, *before), torch.full((n,), float("nan")), torch.arange(n),
            x.new_zeros(0))


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
    init_noise: torch.Tensor | None = None,
    split_logprob: SplitLogProb = "nominal",
    on_step: Callable[[int], None] | None = None,
    keep_means: bool = False,
) -> Rollout:
    """Sample one tree per prompt of `cond`.

    Noise is drawn on the CPU from `generator` in node order, so the result does not depend on
    `max_batch`. Children of a node are contiguous in the next frontier. With one generator per
    tree, each tree's noise comes from its own generator: a tree is then the same whichever other
    trees are sampled with it (how ranks share a batch).

    Args:
        cond: embeddings of P prompts (one tree each).
        keep_means: also keep every stochastic transition's mean μ (``Rollout.means``; GRPO-Guard's
            ratio needs the rollout's μ).
        init_noise: optional (P · plan.roots, *latent) root states (evaluation uses fixed noise; the engine passes one
            noise for every tree when `train.init_same_noise` is on).
    """
    sampler, policy = complete(sampler, "sampler"), complete(policy, "policy")
    device = next(policy.denoiser.parameters()).device
    num_trees = int(next(t for t in vars(cond).values() if isinstance(t, torch.Tensor)).shape[0])
    sigmas, shape, grid = plan_sigmas(sampler, plan), tuple(policy.latent_shape), policy.noise_grid()
    states, trees = _roots(plan, num_trees, shape, generator, init_noise, device)
    out = Rollout(plan, sigmas, states, [], trees, [], states[0], [])
    history = None  # the previous step's (x̂0, σ), for a second-order ODE step
    for k in range(plan.steps):
        x, tree = states[k], trees[k]
        sigma, sigma_next = (sigmas[i].expand(x.shape[0]).to(device) for i in (k, k + 1))
        v = batched_velocity(policy, x, sigma, cond, tree, max_batch)
        x0 = x - sigma.view(-1, *([1] * len(shape))) * v
        if plan.solver and plan.solver[k] == "dpm":
            x_next, log_prob, parent, mean = _dpm_transition(x, x0, sigma, sigma_next, history, out.parent)
        else:
            draw = _noise_drawer(policy, sampler, grid, generator, tree, num_trees)
            x_next, log_prob, parent, mean = _transition(sampler, plan, k, x, v, sigma, sigma_next, draw,
                                                         split_logprob, policy.to_noise_grid)
        history = (x0, sigma.cpu())
        if k == plan.steps - 1:
            out.final = x0[parent.to(device)]
        states.append(x_next.float())
        out.parent.append(parent)
        trees.append(tree[parent])
        out.log_prob.append(log_prob.float().cpu())
        if keep_means:
            out.means.append(mean.float())
        if on_step is not None:
            on_step(k)
    return out
