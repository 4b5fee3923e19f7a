"""Typed containers for rollout trees.

A rollout of ``P`` prompts is a forest of ``P`` trees over ``T`` denoising steps, stored by depth:
``states[d]`` holds every node of depth ``d`` of every tree (depth 0 = the initial noise), so that
step ``k`` is one batched transition from ``states[k]`` to ``states[k + 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class TreePlan:
    """The static shape of one tree over ``steps`` steps.

    Attributes:
        branch: per step k, the number of children each live node gets (1 = an ordinary step).
        noise_scale: per step, the factor λ applied to τ_k when drawing the children of a split.
        stochastic: per step, whether it is an SDE step (it has a log-probability and may be
            trained) or a deterministic ODE step (never trained).
        roots: nodes of depth 0 per tree, each its own initial noise (1: every chain of the tree
            starts from one noise; G: G chains from independent noises, Flow-GRPO's group).
        times: empty (the sampler's own σ grid), or steps + 1 unshifted times u from 1 to 0 that
            the sampler's shift maps to σ (a grid of the plan's own, e.g. a compressed tail).
        solver: empty (every deterministic step is taken by the rollout's solver, ``[strategy.solver]``),
            or per step ``""`` (the same) or the registered name of another solver, on deterministic
            steps only (MixGRPO-Flash's compressed tail names ``"dpm-solver++"``).
    """

    branch: tuple[int, ...]
    noise_scale: tuple[float, ...]
    stochastic: tuple[bool, ...]
    roots: int = 1
    times: tuple[float, ...] = ()
    solver: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.branch) == len(self.noise_scale) == len(self.stochastic)):
            raise ValueError("branch, noise_scale and stochastic need one entry per step")
        if self.roots < 1:
            raise ValueError("a tree needs at least one root")
        if self.times and (len(self.times) != self.steps + 1 or self.times[0] != 1.0 or self.times[-1] != 0.0
                           or any(a <= b for a, b in zip(self.times, self.times[1:], strict=False))):
            raise ValueError("times must be steps + 1 decreasing values from 1 to 0")
        if self.solver and (len(self.solver) != self.steps or any(
                not isinstance(m, str) or (m and st) for m, st in zip(self.solver, self.stochastic, strict=True))):
            raise ValueError("solver needs one name per step ('' for the rollout's own), and names on ODE steps only")
        if any(b < 1 for b in self.branch):
            raise ValueError("branch factors must be >= 1")
        for k, (b, lam) in enumerate(zip(self.branch, self.noise_scale, strict=True)):
            if b == 1 and lam != 1.0:  # the rollout would scale the noise and the update would not
                raise ValueError(f"step {k} does not split but has a split-noise scale λ = {lam}; λ applies to "
                                 "split steps only (use 1.0)")

    @property
    def steps(self) -> int:
        return len(self.branch)

    def live(self, depth: int) -> int:
        """Number of nodes of one tree at `depth` (0 = the roots)."""
        n = self.roots
        for b in self.branch[:depth]:
            n *= b
        return n

    @property
    def leaves(self) -> int:
        return self.live(self.steps)

    @property
    def split_steps(self) -> tuple[int, ...]:
        return tuple(k for k, b in enumerate(self.branch) if b > 1)

    @property
    def rollout_forwards(self) -> int:
        """Model forwards per tree: every live node before each step (shared prefixes once)."""
        return sum(self.live(k) for k in range(self.steps))

    @property
    def edges(self) -> int:
        """Transitions per tree: every live node after each step."""
        return sum(self.live(k + 1) for k in range(self.steps))

    @property
    def stochastic_edges(self) -> int:
        return sum(self.live(k + 1) for k in range(self.steps) if self.stochastic[k])

    def deterministic(self) -> TreePlan:
        """The same tree with every step deterministic: how a deterministic sampler rolls it out."""
        return replace(self, stochastic=(False,) * self.steps)


def compress_tail(plan: TreePlan, ratio: float, solver: str = "dpm-solver++") -> TreePlan:
    """`plan` with the ODE steps after its last stochastic step replaced by steps of the registered
    `solver` on a coarser grid (MixGRPO-Flash: DPM-Solver++): with ``last`` that step, the
    ``T − last − 1`` ODE steps from
    u_{last+1} to 0 become ``n − 1`` steps of a uniform grid of n = max(⌊(T − last)·ratio⌋, 2) times
    from u_{last+1} to 0 (MixGRPO's released rule, which allows n = 1; here the grid always reaches 0).
    The plan is returned as it is when that saves no step."""
    if plan.times or plan.solver:
        raise ValueError("the plan already has its own grid")
    T = plan.steps
    last = max((k for k in range(T) if plan.stochastic[k]), default=-1)
    n = max(int((T - last) * ratio), 2)
    if last < 0 or n - 1 >= T - last - 1:
        return plan
    head = last + 1
    base = [1.0 - k / T for k in range(head + 1)]
    tail = [base[-1] * (1.0 - j / (n - 1)) for j in range(1, n)]
    return TreePlan(branch=plan.branch[:head] + (1,) * (n - 1), noise_scale=plan.noise_scale[:head] + (1.0,) * (n - 1),
                    stochastic=plan.stochastic[:head] + (False,) * (n - 1), roots=plan.roots,
                    times=tuple(base + tail), solver=("",) * head + (solver,) * (n - 1))


@dataclass
class Rollout:
    """A sampled forest (all tensors on the CPU or the model's device, states in fp32).

    Attributes:
        plan: the tree plan every tree follows.
        sigmas: (T + 1,) noise levels, σ_0 = 1 … σ_T = 0.
        states: T + 1 tensors; ``states[d]`` is (N_d, *latent), N_d = P · plan.live(d) (the roots of
            a tree are contiguous in ``states[0]``).
        parent: T tensors; ``parent[k][j]`` is the index in ``states[k]`` of the parent of node j
            of ``states[k + 1]`` (long, (N_{k+1},)); children of one parent are contiguous.
        tree: T + 1 tensors; ``tree[d][j]`` is the prompt (tree) index of node j at depth d.
        log_prob: T tensors (N_{k+1},) fp32: log-probability of each transition under the
            sampling policy (NaN for ODE steps).
        final: (N_T, *latent) the predicted clean sample x̂0 of the last step, which is decoded
            and rewarded.
        means: empty, or (when the rollout was asked to keep them) T tensors: the mean μ of each
            stochastic transition, aligned with ``states[k + 1]`` (empty for ODE steps).
    """

    plan: TreePlan
    sigmas: torch.Tensor
    states: list[torch.Tensor]
    parent: list[torch.Tensor]
    tree: list[torch.Tensor]
    log_prob: list[torch.Tensor]
    final: torch.Tensor
    means: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_trees(self) -> int:
        return int(self.states[0].shape[0]) // self.plan.roots

    @property
    def steps(self) -> int:
        return self.plan.steps

    def leaves_per_node(self, depth: int) -> int:
        """Leaf descendants of each node at `depth`.

        Nodes are ordered so that the children of node i are contiguous: the leaves below node i
        of depth d are leaves ``i·L … (i+1)·L − 1`` with ``L = leaves_per_node(d)``.
        """
        return self.plan.leaves // self.plan.live(depth)

    def reduce_leaves(self, values: torch.Tensor, depth: int) -> torch.Tensor:
        """Mean of per-leaf `values` (N_T,) over the leaf descendants of every node at `depth`."""
        return values.reshape(-1, self.leaves_per_node(depth)).mean(dim=1)


@dataclass
class EdgeSet:
    """Per-step boolean masks of edges, aligned with ``Rollout.states[k + 1]``."""

    masks: list[torch.Tensor]

    @classmethod
    def all_stochastic(cls, rollout: Rollout) -> EdgeSet:
        return cls(
            [
                torch.full((rollout.states[k + 1].shape[0],), bool(rollout.plan.stochastic[k]))
                for k in range(rollout.steps)
            ]
        )

    def count(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))

    def per_step(self) -> list[int]:
        return [int(m.sum()) for m in self.masks]


@dataclass
class Advantages:
    """Per-step advantages of edges, aligned with ``Rollout.states[k + 1]`` (fp32)."""

    values: list[torch.Tensor]
