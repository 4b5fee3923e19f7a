"""The clipped-ratio policy update over the trained edges of a rollout (docs/algorithms.md §7)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .backend import Backend
from .policy import Conditioning, Policy
from .rollout import SplitLogProb, chunked, edge_log_prob
from .sampler import Sampler
from .tree import Advantages, EdgeSet, Rollout

AccumulationUnit = Literal["edges", "chains"]


@dataclass
class EdgeBatch:
    """A flat list of trained edges: edge i goes from ``states[step[i]][parent]`` to
    ``states[step[i] + 1][child[i]]``.

    Attributes (all (E,)):
        step, child: long indices; chain: the first leaf below the child (groups a chain's edges).
        advantage, old_log_prob: fp32.
    """

    step: torch.Tensor
    child: torch.Tensor
    chain: torch.Tensor
    advantage: torch.Tensor
    old_log_prob: torch.Tensor

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def take(self, index: torch.Tensor) -> EdgeBatch:
        return EdgeBatch(*(t[index] for t in (self.step, self.child, self.chain, self.advantage, self.old_log_prob)))

    @classmethod
    def gather(cls, rollout: Rollout, advantages: Advantages, edges: EdgeSet) -> EdgeBatch:
        parts = []
        for k, mask in enumerate(edges.masks):
            child = torch.nonzero(mask, as_tuple=False).flatten()
            if child.numel() == 0:
                continue
            parts.append(
                (
                    torch.full_like(child, k),
                    child,
                    child * rollout.leaves_per_node(k + 1),
                    advantages.values[k][child].float(),
                    rollout.log_prob[k][child].float(),
                )
            )
        if not parts:
            empty = torch.zeros(0, dtype=torch.long)
            return cls(empty, empty, empty, torch.zeros(0), torch.zeros(0))
        return cls(*(torch.cat(p) for p in zip(*parts, strict=True)))


@dataclass(frozen=True)
class UpdateConfig:
    clip_range: float
    optimizer_steps: int
    epochs: int
    micro_batch: int
    accumulation_unit: AccumulationUnit
    kl_beta: float
    split_logprob: SplitLogProb


@dataclass
class UpdateStats:
    """What one iteration's update did (means over trained edges unless noted)."""

    loss: float = 0.0
    ratio_mean: float = 1.0
    ratio_min: float = 1.0
    ratio_max: float = 1.0
    clip_fraction: float = 0.0
    approx_kl: float = 0.0
    kl: float = 0.0
    grad_norm: float = 0.0
    optimizer_steps: int = 0
    trained_edges: int = 0
    skipped_edges: int = 0
    skipped_steps: int = 0


def partition(batch: EdgeBatch, parts: int, unit: AccumulationUnit, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffle edges (or whole chains) and split them into `parts` near-equal optimizer steps."""
    n = len(batch)
    if n == 0:
        return []
    if unit == "edges":
        order = torch.randperm(n, generator=generator)
        return [c for c in torch.tensor_split(order, min(parts, n)) if c.numel()]
    chains, inverse = torch.unique(batch.chain, return_inverse=True)
    chain_order = torch.randperm(chains.numel(), generator=generator)
    groups = torch.tensor_split(chain_order, min(parts, chains.numel()))
    out = []
    for g in groups:
        members = torch.nonzero(torch.isin(inverse, g), as_tuple=False).flatten()
        # keep a chain's edges in step order, chains in their shuffled order
        rank = torch.empty(chains.numel(), dtype=torch.long)
        rank[g] = torch.arange(g.numel())
        key = rank[inverse[members]] * (batch.step.max() + 1) + batch.step[members]
        out.append(members[torch.argsort(key)])
    return [o for o in out if o.numel()]


def clipped_loss(ratio: torch.Tensor, advantage: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Per-edge ``max(−A·r, −A·clip(r, 1 − ε, 1 + ε))``."""
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped)


def edge_terms(
    policy: Policy,
    sampler: Sampler,
    rollout: Rollout,
    cond: Conditioning,
    batch: EdgeBatch,
    split_logprob: SplitLogProb,
    with_reference: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Re-evaluate the log-probabilities of a micro-batch of stored edges under the current policy.

    Returns (log_prob (E,), std (E,), reference-vs-policy KL (E,) or None), all fp32 with gradients.
    """
    device = next(policy.denoiser.parameters()).device
    xs, xn = [], []
    for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True):
        xs.append(rollout.states[k][rollout.parent[k][c]])
        xn.append(rollout.states[k + 1][c])
    x, x_next = torch.stack(xs).to(device), torch.stack(xn).to(device)
    sigma = rollout.sigmas[batch.step].to(device)
    sigma_next = rollout.sigmas[batch.step + 1].to(device)
    scale = torch.ones(len(batch), device=device)
    if split_logprob == "scaled":
        lam = torch.tensor([rollout.plan.noise_scale[k] if rollout.plan.branch[k] > 1 else 1.0 for k in batch.step.tolist()])
        scale = lam.to(device)
    tree = torch.stack([rollout.tree[k + 1][c] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
    sub = cond.select(tree)
    v = policy.velocity(x, sigma, sub).float()
    log_prob, mean, std = edge_log_prob(sampler, x, v, x_next, sigma, sigma_next, scale)
    kl = None
    if with_reference:
        with torch.no_grad(), policy.reference():
            v_ref = policy.velocity(x, sigma, sub).float()
        mean_ref, _ = sampler.step(x, v_ref, sigma, sigma_next)
        kl = ((mean - mean_ref) ** 2).flatten(1).mean(dim=1) / (2.0 * std.detach() ** 2)
    return log_prob, std, kl


def update(
    policy: Policy,
    sampler: Sampler,
    backend: Backend,
    rollout: Rollout,
    cond: Conditioning,
    batch: EdgeBatch,
    config: UpdateConfig,
    generator: torch.Generator,
    on_micro_batch: Callable[[int], None] | None = None,
) -> UpdateStats:
    """Train on `batch` for ``config.epochs`` passes of ``config.optimizer_steps`` optimizer steps."""
    stats = UpdateStats(trained_edges=len(batch))
    ratios, losses, kls, approx_kls, norms = [], [], [], [], []
    clipped = 0
    for _ in range(config.epochs):
        for step_edges in partition(batch, config.optimizer_steps, config.accumulation_unit, generator):
            n_step = step_edges.numel()
            slices = chunked(n_step, config.micro_batch)
            for i, sl in enumerate(slices):
                mb = batch.take(step_edges[sl])
                log_prob, _, kl = edge_terms(
                    policy, sampler, rollout, cond, mb, config.split_logprob, with_reference=config.kl_beta > 0
                )
                ratio = torch.exp(log_prob - mb.old_log_prob.to(log_prob.device))
                adv = mb.advantage.to(log_prob.device)
                loss_e = clipped_loss(ratio, adv, config.clip_range)
                if kl is not None:
                    loss_e = loss_e + config.kl_beta * kl
                finite = torch.isfinite(ratio) & torch.isfinite(adv) & torch.isfinite(loss_e)
                stats.skipped_edges += int((~finite).sum())
                # Non-finite edges contribute no gradient (they are masked before the sum).
                loss = torch.where(finite, loss_e, torch.zeros_like(loss_e)).sum() / n_step
                backend.backward(loss, boundary=i == len(slices) - 1)
                if finite.any():
                    r = ratio.detach()[finite]
                    ratios.append(r.cpu())
                    losses.append(loss_e.detach()[finite].cpu())
                    approx_kls.append((0.5 * (log_prob.detach()[finite] - mb.old_log_prob.to(r.device)[finite]) ** 2).cpu())
                    clipped += int(((r - 1.0).abs() > config.clip_range).sum())
                    if kl is not None:
                        kls.append(kl.detach()[finite].cpu())
                if on_micro_batch is not None:
                    on_micro_batch(len(mb))
            norm = backend.step()
            norms.append(norm)
            if math.isfinite(norm):
                stats.optimizer_steps += 1
            else:
                stats.skipped_steps += 1
    if ratios:
        r = torch.cat(ratios)
        stats.ratio_mean, stats.ratio_min, stats.ratio_max = float(r.mean()), float(r.min()), float(r.max())
        stats.clip_fraction = clipped / r.numel()
        stats.loss = float(torch.cat(losses).mean())
        stats.approx_kl = float(torch.cat(approx_kls).mean())
        stats.kl = float(torch.cat(kls).mean()) if kls else 0.0
    finite_norms = [n for n in norms if math.isfinite(n)]
    stats.grad_norm = sum(finite_norms) / len(finite_norms) if finite_norms else float("nan")
    return stats

