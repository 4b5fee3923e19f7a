"""Batched frontier rollout: every live node of every tree at a step is one (micro-batched) forward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from .policy import Conditioning, Policy
from .sampler import Sampler, euler_step, gaussian_log_prob, tile_grid
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob (N,), mean, std (N,)) of stored transitions x → x_next; std is multiplied by `scale`."""
    mean, std = sampler.step(x, v, sigma, sigma_next)
    std = std * scale
    return gaussian_log_prob(x_next, mean, std, noise_block(sampler)), mean, std


def noise_block(sampler: Sampler) -> int:
    """The sampler's noise tile size (1 for a sampler without the optional attribute)."""
    return int(getattr(sampler, "noise_block", 1))


def draw_noise(counts: torch.Tensor, shape: tuple[int, ...],
               generator: torch.Generator | Sequence[torch.Generator], block: int = 1) -> torch.Tensor:
    """Standard normal noise for ``counts[t]`` nodes of each tree t (nodes of a tree are contiguous).

    With ``block`` > 1, one draw per ``block``×``block`` tile of the last two axes, repeated over
    the tile (each element still has unit variance).
    """
    total = int(counts.sum())
    if block > 1:
        *lead, h, w = shape
        coarse = draw_noise(counts, (*lead, *tile_grid(h, w, block)), generator)
        return coarse.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    if isinstance(generator, torch.Generator):
        return torch.randn((total, *shape), generator=generator)
    if len(generator) != counts.numel():
        raise ValueError(f"{len(generator)} generators for {counts.numel()} trees")
    return torch.cat([torch.randn((int(c), *shape), generator=g) for c, g in zip(counts, generator, strict=True)])


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
) -> Rollout:
    """Sample one tree per prompt of `cond`.

    Noise is drawn on the CPU from `generator` in node order, so the result does not depend on
    `max_batch`. Children of a node are contiguous in the next frontier. With one generator per
    tree, each tree's noise comes from its own generator: a tree is then the same whichever other
    trees are sampled with it (how ranks share a batch).

    Args:
        cond: embeddings of P prompts (one tree each).
        init_noise: optional (P, *latent) root states (evaluation uses fixed noise; the engine passes one
            noise for every tree when `train.init_same_noise` is on).
    """
    device = next(policy.denoiser.parameters()).device
    num_trees = int(next(t for t in vars(cond).values() if isinstance(t, torch.Tensor)).shape[0])
    sigmas = sampler.sigmas()
    shape = tuple(policy.latent_shape)
    block = noise_block(sampler)
    if init_noise is None:
        init_noise = draw_noise(torch.ones(num_trees, dtype=torch.long), shape, generator)
    states = [init_noise.to(device, torch.float32)]
    trees = [torch.arange(num_trees)]
    parents: list[torch.Tensor] = []
    log_probs: list[torch.Tensor] = []
    final = None
    for k in range(plan.steps):
        x, tree = states[k], trees[k]
        n = x.shape[0]
        sigma = sigmas[k].expand(n).to(device)
        sigma_next = sigmas[k + 1].expand(n).to(device)
        v = batched_velocity(policy, x, sigma, cond, tree, max_batch)
        b, lam = plan.branch[k], plan.noise_scale[k]
        parent = torch.arange(n).repeat_interleave(b)
        if plan.stochastic[k]:
            mean, std = sampler.step(x, v, sigma, sigma_next)
            mean_c, std_c = mean[parent.to(device)], std[parent.to(device)]
            counts = torch.bincount(tree, minlength=num_trees) * b
            noise = draw_noise(counts, shape, generator, block).to(device)
            x_next = mean_c + (lam * std_c).view(-1, *([1] * len(shape))) * noise
            eval_std = std_c * (lam if split_logprob == "scaled" else 1.0)
            log_prob = gaussian_log_prob(x_next, mean_c, eval_std, block)
        else:
            if b != 1:
                raise ValueError(f"step {k} splits but is deterministic; split steps must be stochastic")
            x_next = euler_step(x, v, sigma, sigma_next)
            log_prob = torch.full((n,), float("nan"))
        if k == plan.steps - 1:
            final = (x - sigma.view(-1, *([1] * len(shape))) * v)[parent.to(device)]
        states.append(x_next.float())
        parents.append(parent)
        trees.append(tree[parent])
        log_probs.append(log_prob.float().cpu())
        if on_step is not None:
            on_step(k)
    assert final is not None
    return Rollout(plan, sigmas, states, parents, trees, log_probs, final)
