"""Edges as training units: the units of the policy-gradient family, and the re-evaluation of a
stored transition's log-probability under the current policy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import Units
from .policy import Conditioning, Policy
from .rollout import SplitLogProb, edge_log_prob
from .sampler import Sampler
from .tree import Advantages, EdgeSet, Rollout


@dataclass(kw_only=True)
class EdgeUnits(Units):
    """Trained edges: edge i goes from ``states[step[i]][parent]`` to ``states[step[i] + 1][child[i]]``.

    Attributes (all (E,)), besides those of ``Units`` (major = the step, minor = the child's index
    within its tree, chain = the first leaf below the child):
        child: long, the child's index in ``states[step + 1]``.
        advantage, old_log_prob: fp32, the edge's advantage and its log-probability under the
            sampling policy.
    """

    child: torch.Tensor
    advantage: torch.Tensor
    old_log_prob: torch.Tensor

    @property
    def step(self) -> torch.Tensor:
        return self.major

    def valid(self) -> torch.Tensor:
        return torch.isfinite(self.advantage) & torch.isfinite(self.old_log_prob)

    @classmethod
    def gather(cls, rollout: Rollout, advantages: Advantages, edges: EdgeSet) -> EdgeUnits:
        """The edges of `edges`, step by step and child by child, with their advantages and stored
        log-probabilities."""
        parts = []
        for k, mask in enumerate(edges.masks):
            child = torch.nonzero(mask, as_tuple=False).flatten()
            if child.numel() == 0:
                continue
            tree = rollout.tree[k + 1][child]
            parts.append((tree, torch.full_like(child, k), child - tree * rollout.plan.live(k + 1),
                          child * rollout.leaves_per_node(k + 1), child, advantages.values[k][child].float(),
                          rollout.log_prob[k][child].float()))
        if not parts:
            empty = torch.zeros(0, dtype=torch.long)
            return cls(tree=empty, major=empty, minor=empty, chain=empty, child=empty, advantage=torch.zeros(0),
                       old_log_prob=torch.zeros(0))
        tree, major, minor, chain, child, adv, old = (torch.cat(p) for p in zip(*parts, strict=True))
        return cls(tree=tree, major=major, minor=minor, chain=chain, child=child, advantage=adv, old_log_prob=old)


@dataclass
class Transitions:
    """Stored transitions of a micro-batch of edges, re-evaluated under the current policy (with
    gradients): the parents' latents `x`, the children `x_next`, the noise levels, the conditioning
    of their trees, the velocity, and the step's mean and (scaled) std, all on the policy's device."""

    x: torch.Tensor
    x_next: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    cond: Conditioning
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def reevaluate(policy: Policy, sampler: Sampler, rollout: Rollout, cond: Conditioning, units: EdgeUnits,
               split_logprob: SplitLogProb) -> Transitions:
    """The log-probabilities (E,) fp32 of stored edges under the current policy, with their means and
    stds; a split edge is scored with λ·τ when `split_logprob` is ``"scaled"``."""
    device = next(policy.denoiser.parameters()).device
    steps, children = units.step.tolist(), units.child.tolist()
    x = torch.stack([rollout.states[k][rollout.parent[k][c]] for k, c in zip(steps, children, strict=True)]).to(device)
    x_next = torch.stack([rollout.states[k + 1][c] for k, c in zip(steps, children, strict=True)]).to(device)
    sigma = rollout.sigmas[units.step].to(device)
    sigma_next = rollout.sigmas[units.step + 1].to(device)
    scale = torch.ones(len(units), device=device)
    if split_logprob == "scaled":
        plan = rollout.plan
        scale = torch.tensor([plan.noise_scale[k] if plan.branch[k] > 1 else 1.0 for k in steps]).to(device)
    sub = cond.select(units.tree)
    v = policy.velocity(x, sigma, sub).float()
    log_prob, mean, std = edge_log_prob(sampler, x, v, x_next, sigma, sigma_next, scale, policy.to_noise_grid)
    return Transitions(x, x_next, sigma, sigma_next, sub, log_prob, mean, std)
