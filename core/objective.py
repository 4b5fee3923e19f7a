"""The Objective protocol: the learning rule, from a rollout and its advantages to a loss.

An objective says what the rollout must keep for it (``Keep``), builds its training **units** from
the rollout, the advantages and the trained edges (``units``), and gives the loss of a micro-batch
of units (``loss``). Units are whatever the rule trains on: the edges of the tree for the
policy-gradient family (``grpo.core.edges.EdgeUnits``), or (sample, noise level, noise draw)
triples for an objective on the forward process. Everything around the loss is the engine's and
the same for every objective (``grpo.core.update``): shuffling units into optimizer steps (by
unit, or keeping a chain's units together), micro-batches, epochs, gradient clipping, a non-finite
unit costing that unit, the EMA hook and the reductions over ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Literal, Protocol, runtime_checkable

import torch

from .policy import Conditioning, Policy
from .sampler import Sampler
from .tree import Advantages, EdgeSet, Rollout, TreePlan


@dataclass(frozen=True)
class Keep:
    """What a rollout keeps (the union of what its objective and its advantage estimator read).

    Attributes:
        log_prob: every stochastic transition's log-probability under the sampling policy
            (``Rollout.log_prob``; NaN where not kept).
        means: every stochastic transition's mean μ (``Rollout.means``).
        states: every node's latent (``Rollout.states``); without it a state is a (N_d, 0)
            placeholder once the next step has used it, and only the leaves' predicted clean samples
            (``Rollout.final``) stay whole.
        split_logprob: how a split edge's log-probability is taken: ``"nominal"`` with the step's τ
            (the released BranchGRPO), ``"scaled"`` with λ·τ, the density its children were drawn from.
    """

    log_prob: bool = False
    means: bool = False
    states: bool = False
    split_logprob: Literal["nominal", "scaled"] = "nominal"

    def union(self, other: Keep) -> Keep:
        """Everything either keeps (the split mode of `self`, which owns the densities)."""
        return Keep(self.log_prob or other.log_prob, self.means or other.means, self.states or other.states,
                    self.split_logprob)


@dataclass(kw_only=True)
class Units:
    """Base of an objective's training units: a dataclass whose tensor fields all have the number of
    units U as their first dimension. Subclasses add their own fields.

    Attributes (all (U,) long):
        tree: the unit's tree (prompt) on this rank.
        major, minor: with the tree, the unit's place in the iteration: units are ordered by major,
            then tree (over every rank's trees, as one rank holding all trees would list them), then
            minor. For edges: the step, and the child's index within its tree.
        chain: the leaf (index on this rank) whose chain the unit belongs to; with
            ``train.accumulation_unit = "chains"`` a chain's units share an optimizer step.
    """

    tree: torch.Tensor
    major: torch.Tensor
    minor: torch.Tensor
    chain: torch.Tensor

    def __len__(self) -> int:
        return int(self.tree.shape[0])

    def take(self, index: torch.Tensor) -> Units:
        """The units at `index` (long), in that order."""
        values = vars(self)
        return type(self)(**{f.name: values[f.name][index] if isinstance(values[f.name], torch.Tensor)
                             else values[f.name] for f in fields(self)})

    def valid(self) -> torch.Tensor:
        """(U,) bool: units whose stored values are finite (the others are left out before the
        shuffle, as if never sampled). Default: all."""
        return torch.ones(len(self), dtype=torch.bool)


@dataclass(frozen=True)
class Metric:
    """One statistic of the update, logged as ``update/<name>``: the reduction (``mean``, ``min``,
    ``max``) of a per-unit value over every finite unit of every rank, or `empty` without any."""

    value: str
    reduce: Literal["mean", "min", "max"] = "mean"
    empty: float = 0.0


@dataclass
class UnitLoss:
    """The loss of a micro-batch of U units.

    Attributes:
        loss: (U,) fp32 with gradients: each unit's loss (the engine averages over an optimizer step).
        finite: (U,) bool: units whose inputs were finite; a unit that is not must have loss 0 and
            no gradient path through a non-finite value (mask it *before* ``exp`` and products).
        values: per-unit values (U,) the objective's ``metrics`` reduce (no gradients needed).
    """

    loss: torch.Tensor
    finite: torch.Tensor
    values: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Lag:
    """A lagged copy of the trained weights that an objective keeps (``Objective.lag``): the engine
    keeps it beside the weights, moves it as ``copy ← d·copy + (1 − d)·θ`` and saves it with every
    checkpoint. DiffusionNFT's old policy is one; so are AWM's and DGPO's EMA references.

    Attributes:
        rate, cap, flat: the decay after s optimizer steps, ``d = min(rate·(s − flat), cap)``, and 0
            for s < flat (DiffusionNFT's ``decay_type`` 1: rate 0.001, cap 0.5, flat 0).
        every: when the copy moves: after each ``"iteration"``'s update, or after each
            ``"optimizer_step"``.
        rollout: the rollout samples with the copy instead of the trained weights ...
        rollout_after: ... once this many optimizer steps have been taken (0: from the start).

    The copy starts as the weights the run starts with. A loss reads it through
    ``LossContext.lagged``.
    """

    rate: float
    cap: float
    flat: int = 0
    every: Literal["iteration", "optimizer_step"] = "iteration"
    rollout: bool = False
    rollout_after: int = 0

    def decay(self, steps: int) -> float:
        """d after `steps` optimizer steps."""
        return 0.0 if steps < self.flat else min((steps - self.flat) * self.rate, self.cap)


@dataclass(frozen=True)
class UnitContext:
    """What ``units`` may use besides the rollout.

    Attributes:
        iteration: the current iteration (0-based).
        generators: one seeded CPU generator per tree of this rank, from (train.seed, iteration,
            the tree's index in the iteration): a tree's units are the same on whichever rank.
        scored: (N_T,) bool, the leaves whose every reward was scored, or None when all were. A
            leaf that was not got its tree's mean score (advantage about 0); the engine already
            trains none of the edges only it has, and an objective on the leaves leaves it out.

    ``grpo plan`` counts units on a rollout of the plan's structure whose states and leaves have no
    elements (shape (N, 0)): ``units`` must not depend on their values to say how many there are.
    """

    iteration: int
    generators: Sequence[torch.Generator]
    scored: torch.Tensor | None = None


@dataclass(frozen=True)
class LossContext:
    """What ``loss`` runs on: the policy being trained, the sampler, this rank's rollout and the
    conditioning of its prompts (one row per tree).

    ``lagged()`` is a context in which the policy predicts with the objective's lagged copy of the
    weights (``Objective.lag``; the trained weights when it keeps none). It swaps the weights in
    place: enter it, under ``torch.no_grad()``, before any forward with gradients in the same loss.
    """

    policy: Policy
    sampler: Sampler
    rollout: Rollout
    cond: Conditioning
    lagged: Callable[[], AbstractContextManager[None]] = nullcontext


@runtime_checkable
class Objective(Protocol):
    """The learning rule (``[strategy.objective]``).

    Attributes:
        unit: the noun of its units in the logs (``update/trained_<unit>``): ``"edges"``, ``"samples"``.
        keep: what the rollout keeps for it. An objective that keeps ``log_prob`` trains on per-step
            densities and refuses a deterministic sampler.
        metrics: the statistics it logs, by name.
        needs_reference: optional (default False): the policy keeps a frozen copy of its base
            weights (``Policy.reference()``), for a KL term.
        lag: optional (default None): a lagged copy of the trained weights to keep (``Lag``), read
            in the loss through ``LossContext.lagged``.

    ``check_plan`` is optional too (default: accepts every tree).
    """

    unit: str
    keep: Keep
    metrics: Mapping[str, Metric]
    needs_reference: bool
    lag: Lag | None

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> Units:
        """This rank's training units of an iteration. `edges` are the trained edges the pruners chose
        (an objective that does not train edges may use them to choose leaves, or ignore them)."""
        ...

    def loss(self, units: Units, ctx: LossContext) -> UnitLoss:
        """The loss of a micro-batch of `units`, with gradients to the policy's trainable parameters."""
        ...

    def check_plan(self, plan: TreePlan, sampler: Sampler) -> None:
        """Raise ``UserError`` (``where`` = one of its options, or a recipe path) when a rollout of
        `plan` with `sampler` cannot train this objective."""
        ...
