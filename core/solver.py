"""The Solver protocol: one deterministic (ODE) step of a flow-matching model.

A rollout's deterministic steps, and every step of an evaluation, are taken by a registered solver
(``[strategy.solver]``, ``[eval] solver``). A plan may name another solver for some of its steps
(``TreePlan.solver``; MixGRPO-Flash runs its compressed tail with ``dpm-solver++``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Previous:
    """A node's previous step, for a multistep solver: the predicted clean sample x̂0 (N, *latent)
    and the velocity v (N, *latent) at its noise level σ (N,), each row that of the node's parent."""

    x0: torch.Tensor
    v: torch.Tensor
    sigma: torch.Tensor


@runtime_checkable
class Solver(Protocol):
    """Advances latents deterministically from σ to σ' (σ' < σ)."""

    def step(self, x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             sigma_next: torch.Tensor, previous: Previous | None) -> torch.Tensor:
        """The next latents (N, *latent) fp32.

        Args:
            x: latents (N, *latent) at noise levels `sigma` (N,).
            v: the predicted velocity ε − x0 (N, *latent), fp32.
            x0: the predicted clean sample ``x − σ·v``.
            sigma_next: (N,) the next noise levels (0 at the last step).
            previous: the node's previous step (None at the first step of a rollout).
        """
        ...
