"""The clipped-ratio policy update over the trained edges of a rollout: per edge max(−A·r, −A·clip(r, 1 ± ε)),
averaged over the edges of each optimizer step, plus an optional KL penalty to the base policy."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from .abilities import complete
from .backend import Backend
from .dist import Group
from .policy import Conditioning, Policy
from .rollout import SplitLogProb, chunked, edge_log_prob
from .sampler import Sampler, block_mean
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
    kl_form: str = "gaussian"
    grpo_guard: bool = False


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


MAX_LOG_RATIO = 80.0  # |log r| beyond this overflows fp32 once multiplied: the edge is left out


def edge_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor,
                kl: torch.Tensor | None, config: UpdateConfig, log_ratio: torch.Tensor | None = None,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-edge losses (E,), ratios (E,) and which edges are finite (E,) bool.

    The ratio is exp(log_prob − old_log_prob), or exp(`log_ratio`) when given (GRPO-Guard's); the
    clipped term is multiplied by `weight` (E,) when given, the KL term is not. An edge whose
    log-ratio, advantage or KL is not finite (or whose log-ratio exceeds ±``MAX_LOG_RATIO``) gets
    loss 0 with no gradient: its inputs are replaced *before* ``exp`` and the products, so that the
    backward pass never meets 0·inf, and one bad edge cannot turn the step's shared gradient into NaN."""
    delta = log_prob - old_log_prob if log_ratio is None else log_ratio
    finite = torch.isfinite(delta) & (delta.abs() <= MAX_LOG_RATIO) & torch.isfinite(advantage)
    if kl is not None:
        finite &= torch.isfinite(kl)
    ratio = torch.exp(torch.where(finite, delta, torch.zeros_like(delta)))
    adv = torch.where(finite, advantage, torch.zeros_like(advantage))
    loss_e = clipped_loss(ratio, adv, config.clip_range)
    if weight is not None:
        loss_e = loss_e * weight
    if kl is not None:
        loss_e = loss_e + config.kl_beta * torch.where(finite, kl, torch.zeros_like(kl))
    return torch.where(finite, loss_e, torch.zeros_like(loss_e)), ratio, finite


def edge_terms(
    policy: Policy,
    sampler: Sampler,
    rollout: Rollout,
    cond: Conditioning,
    batch: EdgeBatch,
    split_logprob: SplitLogProb,
    with_reference: bool = False,
    kl_form: str = "gaussian",
    guard: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Re-evaluate the log-probabilities of a micro-batch of stored edges under the current policy.

    Returns (log_prob (E,), std (E,), reference-vs-policy KL (E,) or None), all fp32 with gradients.
    With a `guard` list, GRPO-Guard's log-ratio of the edges is appended to it.
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
    log_prob, mean, std = edge_log_prob(sampler, x, v, x_next, sigma, sigma_next, scale,
                                        complete(policy, "policy").to_noise_grid)
    kl = None
    if with_reference:
        with torch.no_grad(), policy.reference():
            v_ref = policy.velocity(x, sigma, sub).float()
        mean_ref, _ = sampler.step(x, v_ref, sigma, sigma_next)
        kl = reference_kl(policy, sampler, mean, mean_ref, std.detach(), sigma - sigma_next, kl_form)
    if guard is not None:
        guard.append(guarded_log_ratio(policy, sampler, rollout, batch, x_next, mean, std))
    return log_prob, std, kl


def guarded_log_ratio(policy: Policy, sampler: Sampler, rollout: Rollout, batch: EdgeBatch, x_next: torch.Tensor,
                      mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(E,) GRPO-Guard's re-centred log-ratio ``s·(log r + ‖Δμ‖²/(2s²))`` with Δμ = μ − μ_old and s
    the step's standard deviation. For a Gaussian step it is ``mean(ε ⊙ Δμ)``, ε = (x' − μ_old)/s
    the drawn noise: zero-mean under the rollout, where log r itself drifts to −‖Δμ‖²/(2s²) < 0,
    and no longer scaled by 1/s, which is largest at the low-noise steps. Computed on the noise's
    draws (tile means on the policy's noise grid), as the log-probabilities are; with gradients."""
    if not rollout.means:
        raise ValueError("GRPO-Guard needs the rollout's transition means (rollout(..., keep_means=True))")
    to_grid, device = complete(policy, "policy").to_noise_grid, mean.device
    old = torch.stack([rollout.means[k][c] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
    old = old.to(device)
    block = complete(sampler, "sampler").noise_block
    drawn = block_mean(to_grid(x_next - old), block)
    shift = block_mean(to_grid(mean - old), block)
    return (drawn * shift).flatten(1).mean(dim=1) / std


def step_sizes(rollout: Rollout, batch: EdgeBatch) -> torch.Tensor:
    """(E,) the σ-step Δ = σ_k − σ_{k+1} of each edge (GRPO-Guard divides a step's loss by it)."""
    return rollout.sigmas[batch.step] - rollout.sigmas[batch.step + 1]


def reference_kl(policy: Policy, sampler: Sampler, mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor,
                 delta: torch.Tensor, kl_form: str = "gaussian") -> torch.Tensor:
    """(E,) KL of the policy's step to the reference's, on the draws the noise is made of.

    ``gaussian``: the exact KL of N(μ̄, τ²) to N(μ̄_ref, τ²) per draw, μ̄ the means over the
    sampler's noise tiles on the policy's noise grid (the elements themselves for ``noise_block``
    1), averaged over the draws like the log-probability. ``flow-grpo``: Flow-GRPO's
    ‖μ − μ_ref‖² / (2σ_t²) with its σ_t² = τ²/Δ (no step size Δ in the denominator), that is the
    gaussian form × Δ: a β taken from Flow-GRPO's recipes means the same here only in this form.
    """
    policy, sampler = complete(policy, "policy"), complete(sampler, "sampler")
    d = block_mean(policy.to_noise_grid(mean) - policy.to_noise_grid(mean_ref), sampler.noise_block)
    kl = (d**2).flatten(1).mean(dim=1) / (2.0 * std**2)
    return kl * delta if kl_form == "flow-grpo" else kl


def _global_layout(rollout: Rollout, batch: EdgeBatch, group: Group) -> tuple[EdgeBatch, torch.Tensor, torch.Tensor]:
    """Every rank's trained edges in the order one rank holding all trees would list them.

    Every rank holds the same number of trees of the same plan, so rank r's node i at step k is
    node ``r·n_k + i`` of the whole iteration. Edges whose stored advantage or log-probability is
    not finite are left out (on every rank alike), as if they had never been sampled. Returns (the
    global edges, with zero advantages and log-probabilities: only their order, steps and chains
    matter), each global edge's rank, and its index in its rank's local batch.
    """
    sizes = torch.tensor([s.shape[0] for s in rollout.states[1:]])
    leaves = rollout.states[-1].shape[0]
    gstep = group.gather(batch.step)
    gchild = group.gather(batch.child + group.rank * sizes[batch.step])
    gchain = group.gather(batch.chain + group.rank * leaves)
    owner = group.gather(torch.full_like(batch.step, group.rank))
    local = group.gather(torch.arange(len(batch)))
    stored = group.gather(torch.isfinite(batch.advantage) & torch.isfinite(batch.old_log_prob))
    order = torch.argsort(gstep * (int(sizes.max()) * group.size + 1) + gchild, stable=True)
    order = order[stored[order]]  # an edge whose stored advantage or log-probability is not finite is left out
    zeros = torch.zeros(order.numel())
    every = EdgeBatch(gstep[order], gchild[order], gchain[order], zeros, zeros)
    return every, owner[order], local[order]


@dataclass
class _Tally:
    """What the micro-batches of an update saw, on this rank (finite edges only)."""

    ratios: list[torch.Tensor] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    kls: list[torch.Tensor] = field(default_factory=list)
    approx_kls: list[torch.Tensor] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    clipped: int = 0
    skipped_edges: int = 0

    def add(self, ratio: torch.Tensor, loss_e: torch.Tensor, kl: torch.Tensor | None, log_prob: torch.Tensor,
            old: torch.Tensor, finite: torch.Tensor, clip_range: float) -> None:
        self.skipped_edges += int((~finite).sum())
        if finite.any():
            r = ratio.detach()[finite]
            self.ratios.append(r.cpu())
            self.losses.append(loss_e.detach()[finite].cpu())
            self.approx_kls.append((0.5 * (log_prob.detach()[finite] - old.to(r.device)[finite]) ** 2).cpu())
            self.clipped += int(((r - 1.0).abs() > clip_range).sum())
            if kl is not None:
                self.kls.append(kl.detach()[finite].cpu())

    def finish(self, stats: UpdateStats, group: Group) -> UpdateStats:
        """Means over every rank's edges, in ``stats``."""
        def gathered(parts: list[torch.Tensor]) -> torch.Tensor:
            return group.gather(torch.cat(parts) if parts else torch.zeros(0))

        ratio_all = gathered(self.ratios)
        if ratio_all.numel():
            stats.ratio_mean, stats.ratio_min = float(ratio_all.mean()), float(ratio_all.min())
            stats.ratio_max = float(ratio_all.max())
            stats.clip_fraction = int(group.gather(torch.tensor([self.clipped])).sum()) / ratio_all.numel()
            stats.loss = float(gathered(self.losses).mean())
            stats.approx_kl = float(gathered(self.approx_kls).mean())
            kl_all = gathered(self.kls)
            stats.kl = float(kl_all.mean()) if kl_all.numel() else 0.0
        stats.skipped_edges = int(group.gather(torch.tensor([self.skipped_edges])).sum())
        finite_norms = [n for n in self.norms if math.isfinite(n)]
        stats.grad_norm = sum(finite_norms) / len(finite_norms) if finite_norms else float("nan")
        return stats


def _optimizer_step(policy: Policy, sampler: Sampler, backend: Backend, rollout: Rollout, cond: Conditioning,
                    batch: EdgeBatch, mine: torch.Tensor, n_micro: int, n_step: int, config: UpdateConfig,
                    group: Group, tally: _Tally, on_micro_batch: Callable[[int], None] | None) -> float:
    """The micro-batches of one optimizer step (this rank's edges `mine` of the step's `n_step`),
    then the step; returns the gradient norm."""
    slices = chunked(mine.numel(), config.micro_batch)
    for i in range(n_micro):
        if i < len(slices):
            mb, weight = batch.take(mine[slices[i]]), 1.0
        else:  # keeps the ranks' collectives paired; contributes no gradient
            mb, weight = (batch if len(batch) else _any_edge(rollout)).take(torch.tensor([0])), 0.0
        guard: list[torch.Tensor] | None = [] if config.grpo_guard else None
        log_prob, _, kl = edge_terms(policy, sampler, rollout, cond, mb, config.split_logprob,
                                     with_reference=config.kl_beta > 0, kl_form=config.kl_form, guard=guard)
        dev = log_prob.device
        loss_e, ratio, finite = edge_losses(log_prob, mb.old_log_prob.to(dev), mb.advantage.to(dev), kl, config,
                                            log_ratio=guard[0] if guard else None,
                                            weight=1.0 / step_sizes(rollout, mb).to(dev) if guard else None)
        loss = loss_e.sum() * (weight * group.size / n_step)
        backend.backward(loss, boundary=i == n_micro - 1)
        if weight == 0.0:
            continue
        tally.add(ratio, loss_e, kl, log_prob, mb.old_log_prob, finite, config.clip_range)
        if on_micro_batch is not None:
            on_micro_batch(len(mb) * group.size)
    return backend.step()


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
    group: Group | None = None,
    on_optimizer_step: Callable[[], None] | None = None,
) -> UpdateStats:
    """Train on `batch` for ``config.epochs`` passes of ``config.optimizer_steps`` optimizer steps.

    With several ranks, `batch` is this rank's share and `generator` is in the same state on every
    rank: the optimizer steps are drawn over every rank's edges, exactly as one rank holding all
    trees would draw them, and each rank trains its members of each step. Every rank runs the same
    number of micro-batches (a rank short of edges runs a zero-weight one) so that the backend's
    collectives pair up, and each loss is divided by the step's global edge count times the number
    of ranks the backend averages gradients over. `on_optimizer_step` is called after every step
    that was taken (not after one skipped for a non-finite gradient).
    """
    group = group or Group()
    every, owner, local_index = _global_layout(rollout, batch, group)
    stats, tally = UpdateStats(trained_edges=len(every)), _Tally()
    left_out = int(group.gather(torch.tensor([len(batch)])).sum()) - len(every)  # stored values not finite
    for _ in range(config.epochs):
        for step_edges in partition(every, config.optimizer_steps, config.accumulation_unit, generator):
            mine = local_index[step_edges[owner[step_edges] == group.rank]]
            counts = torch.bincount(owner[step_edges], minlength=group.size)
            n_micro = max(1, max(math.ceil(int(c) / config.micro_batch) for c in counts))
            norm = _optimizer_step(policy, sampler, backend, rollout, cond, batch, mine, n_micro,
                                   step_edges.numel(), config, group, tally, on_micro_batch)
            tally.norms.append(norm)
            if math.isfinite(norm):
                stats.optimizer_steps += 1
                if on_optimizer_step is not None:
                    on_optimizer_step()
            else:
                stats.skipped_steps += 1
    stats = tally.finish(stats, group)
    stats.skipped_edges += left_out * config.epochs
    return stats


def _any_edge(rollout: Rollout) -> EdgeBatch:
    """One stochastic edge of `rollout` (for a rank that trains no edge in an optimizer step)."""
    k = next(i for i, s in enumerate(rollout.plan.stochastic) if s)
    z = torch.zeros(1, dtype=torch.long)
    return EdgeBatch(z + k, z, z, torch.zeros(1), rollout.log_prob[k][:1].float())
