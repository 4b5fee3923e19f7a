"""The update schedule every objective shares: its units shuffled into optimizer steps, micro-batches,
epochs, non-finite units and steps, and the reductions over ranks.

Each optimizer step averages the objective's per-unit losses over the step's units (of every rank).
A unit whose stored values are not finite is left out before the shuffle, as if never sampled; a
unit whose loss is not finite adds nothing (the objective masks it before anything that could
overflow) and counts in its step's mean like a unit of loss 0; a step whose gradient norm is not
finite is skipped on every rank. The objective only gives the loss of a micro-batch
(``grpo.core.objective``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from .backend import Backend
from .dist import Group
from .objective import LossContext, Metric, Objective, Units
from .rollout import chunked

AccumulationUnit = Literal["edges", "chains"]
MicroBatchOrder = Literal["chain", "step"]


@dataclass(frozen=True)
class UpdateConfig:
    """``[train]``'s schedule: optimizer steps per epoch, epochs, units per micro-batch, whether a
    chain's units share an optimizer step, and the order of a step's units across its micro-batches."""

    optimizer_steps: int
    epochs: int
    micro_batch: int
    accumulation_unit: AccumulationUnit = "edges"
    micro_batch_order: MicroBatchOrder = "chain"


@dataclass
class UpdateStats:
    """What one iteration's update did: the objective's metrics (means over its finite units unless
    it says otherwise), the mean gradient norm, the optimizer steps taken and skipped, and the units
    trained and skipped (every rank's)."""

    metrics: dict[str, float] = field(default_factory=dict)
    grad_norm: float = 0.0
    optimizer_steps: int = 0
    trained: int = 0
    skipped: int = 0
    skipped_steps: int = 0


@dataclass
class Layout:
    """Every rank's units in one order (as one rank holding all trees would list them): each unit's
    major key and chain over the whole iteration, the rank that holds it and its index there."""

    major: torch.Tensor
    chain: torch.Tensor
    owner: torch.Tensor
    local: torch.Tensor

    def __len__(self) -> int:
        return int(self.major.shape[0])


def partition(major: torch.Tensor, chain: torch.Tensor, parts: int, unit: AccumulationUnit,
              generator: torch.Generator, order: MicroBatchOrder = "chain") -> list[torch.Tensor]:
    """Shuffle units (or whole chains) and split them into `parts` near-equal optimizer steps;
    returns each step's positions. With chains, a chain's units keep their major order, chain after
    chain; with `order` "step", a step's units are listed by major key first (every unit of the first
    step, then of the second, …; chains and shuffled units keep their order within a step)."""
    n = int(major.shape[0])
    if n == 0:
        return []
    if unit == "edges":
        shuffled = torch.randperm(n, generator=generator)
        steps = [c for c in torch.tensor_split(shuffled, min(parts, n)) if c.numel()]
        return [c[torch.argsort(major[c], stable=True)] for c in steps] if order == "step" else steps
    chains, inverse = torch.unique(chain, return_inverse=True)
    chain_order = torch.randperm(chains.numel(), generator=generator)
    groups = torch.tensor_split(chain_order, min(parts, chains.numel()))
    out = []
    for g in groups:
        members = torch.nonzero(torch.isin(inverse, g), as_tuple=False).flatten()
        rank = torch.empty(chains.numel(), dtype=torch.long)
        rank[g] = torch.arange(g.numel())
        if order == "step":
            key = major[members] * chains.numel() + rank[inverse[members]]
        else:
            key = rank[inverse[members]] * (major.max() + 1) + major[members]
        out.append(members[torch.argsort(key)])
    return [o for o in out if o.numel()]


def global_layout(units: Units, trees: int, leaves: int, group: Group) -> Layout:
    """Every rank's valid units in the order of (major, tree over all ranks, minor). Every rank holds
    `trees` trees of `leaves` leaves in all, so rank r's tree t is tree ``r·trees + t`` of the
    iteration. A unit whose stored values are not finite is left out (on every rank alike)."""
    gtree = group.gather(units.tree + group.rank * trees)
    gmajor, gminor = group.gather(units.major), group.gather(units.minor)
    gchain = group.gather(units.chain + group.rank * leaves)
    owner = group.gather(torch.full_like(units.tree, group.rank))
    local = group.gather(torch.arange(len(units)))
    valid = group.gather(units.valid())
    span = int(gminor.max()) + 1 if gminor.numel() else 1
    order = torch.argsort((gmajor * (trees * group.size) + gtree) * span + gminor, stable=True)
    order = order[valid[order]]
    return Layout(gmajor[order], gchain[order], owner[order], local[order])


@dataclass
class _Tally:
    """What the micro-batches of an update saw, on this rank (finite units only)."""

    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    norms: list[float] = field(default_factory=list)
    skipped: int = 0

    def add(self, values: Mapping[str, torch.Tensor], finite: torch.Tensor) -> None:
        self.skipped += int((~finite).sum())
        if finite.any():
            for name, v in values.items():
                self.values.setdefault(name, []).append(v.detach()[finite.to(v.device)].cpu())

    def finish(self, stats: UpdateStats, metrics: Mapping[str, Metric], group: Group) -> UpdateStats:
        """The objective's metrics over every rank's units, the mean gradient norm, the skipped units."""
        gathered: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            if metric.value not in gathered:
                parts = self.values.get(metric.value, [])
                gathered[metric.value] = group.gather(torch.cat(parts) if parts else torch.zeros(0))
            values = gathered[metric.value]
            if not values.numel():
                stats.metrics[name] = metric.empty
            else:
                stats.metrics[name] = float({"mean": values.mean, "min": values.min, "max": values.max}[metric.reduce]())
        stats.skipped = int(group.gather(torch.tensor([self.skipped])).sum())
        finite_norms = [n for n in self.norms if math.isfinite(n)]
        stats.grad_norm = sum(finite_norms) / len(finite_norms) if finite_norms else float("nan")
        return stats


def _optimizer_step(objective: Objective, ctx: LossContext, backend: Backend, units: Units, mine: torch.Tensor,
                    n_micro: int, n_step: int, config: UpdateConfig, group: Group, tally: _Tally,
                    on_micro_batch: Callable[[int], None] | None, placeholder: Callable[[], Units]) -> float:
    """The micro-batches of one optimizer step (this rank's units `mine` of the step's `n_step`),
    then the step; returns the gradient norm."""
    slices = chunked(mine.numel(), config.micro_batch)
    for i in range(n_micro):
        if i < len(slices):
            mb, weight = units.take(mine[slices[i]]), 1.0
        else:  # keeps the ranks' collectives paired; contributes no gradient
            mb, weight = (units if len(units) else placeholder()).take(torch.tensor([0])), 0.0
        out = objective.loss(mb, ctx)
        finite = out.finite.to(out.loss.device) & torch.isfinite(out.loss)
        loss_u = torch.where(finite, out.loss, torch.zeros_like(out.loss))
        backend.backward(loss_u.sum() * (weight * group.size / n_step), boundary=i == n_micro - 1)
        if weight == 0.0:
            continue
        tally.add({"loss": loss_u, **out.values}, finite)
        if on_micro_batch is not None:
            on_micro_batch(len(mb) * group.size)
    return backend.step()


def update(
    objective: Objective,
    ctx: LossContext,
    backend: Backend,
    units: Units,
    config: UpdateConfig,
    generator: torch.Generator,
    *,
    placeholder: Callable[[], Units],
    on_micro_batch: Callable[[int], None] | None = None,
    group: Group | None = None,
    on_optimizer_step: Callable[[], None] | None = None,
    before_optimizer_step: Callable[[], None] | None = None,
) -> UpdateStats:
    """Train on `units` for ``config.epochs`` passes of ``config.optimizer_steps`` optimizer steps.

    With several ranks, `units` are this rank's and `generator` is in the same state on every rank:
    the optimizer steps are drawn over every rank's units, exactly as one rank holding all trees
    would draw them, and each rank trains its members of each step. Every rank runs the same number
    of micro-batches (a rank short of units runs a zero-weight one, of its first unit or of
    `placeholder()`'s) so that the backend's collectives pair up, and each loss is divided by the
    step's global unit count times the number of ranks the backend averages gradients over.
    `on_optimizer_step` is called after every step that was taken (not after a skipped one),
    `before_optimizer_step` before each step's micro-batches.
    """
    group = group or Group()
    layout = global_layout(units, ctx.rollout.num_trees, int(ctx.rollout.states[-1].shape[0]), group)
    stats, tally = UpdateStats(trained=len(layout)), _Tally()
    left_out = int(group.gather(torch.tensor([len(units)])).sum()) - len(layout)  # stored values not finite
    for _ in range(config.epochs):
        for step_units in partition(layout.major, layout.chain, config.optimizer_steps, config.accumulation_unit,
                                    generator, config.micro_batch_order):
            mine = layout.local[step_units[layout.owner[step_units] == group.rank]]
            counts = torch.bincount(layout.owner[step_units], minlength=group.size)
            n_micro = max(1, max(math.ceil(int(c) / config.micro_batch) for c in counts))
            if before_optimizer_step is not None:
                before_optimizer_step()
            norm = _optimizer_step(objective, ctx, backend, units, mine, n_micro, step_units.numel(), config, group,
                                   tally, on_micro_batch, placeholder)
            tally.norms.append(norm)
            if math.isfinite(norm):
                stats.optimizer_steps += 1
                if on_optimizer_step is not None:
                    on_optimizer_step()
            else:
                stats.skipped_steps += 1
    stats = tally.finish(stats, objective.metrics, group)
    stats.skipped += left_out * config.epochs
    return stats
