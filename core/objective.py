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

from collections.abc import Mapping, Sequence
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
class UnitContext:
    """What ``units`` may use besides the rollout.

    Attributes:
        iteration: the current iteration (0-based).
        generators: one seeded CPU generator per tree of this rank, from (train.seed, iteration,
            the tree's index in the iteration): a tree's units are the same on whichever rank.

    ``grpo plan`` counts units on a rollout of the plan's structure whose states and leaves have no
    elements (shape (N, 0)): ``units`` must not depend on their values to say how many there are.
    """

    iteration: int
    generators: Sequence[torch.Generator]


@dataclass(frozen=True)
class LossContext:
    """What ``loss`` runs on: the policy being trained, the sampler, this rank's rollout and the
    conditioning of its prompts (one row per tree)."""

    policy: Policy
    sampler: Sampler
    rollout: Rollout
    cond: Conditioning


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

    ``check_plan`` is optional too (default: accepts every tree).
    """

    unit: str
    keep: Keep
    metrics: Mapping[str, Metric]
    needs_reference: bool

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
