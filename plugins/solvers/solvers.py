"""Deterministic solvers of the flow ODE dx/dσ = v: Euler, and DPM-Solver++ in its data-prediction form
(MixGRPO-Flash's solver)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from grpo.core.sampler import dpm_solver_step, euler_step
from grpo.core.schema import Doc
from grpo.core.solver import Previous


class Euler:
    """The Euler step ``x + (σ' − σ)·v``: exact on straight flows, first order."""

    uses_previous = False

    def __init__(self) -> None:
        pass

    def step(self, x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             sigma_next: torch.Tensor, previous: Previous | None) -> torch.Tensor:
        return euler_step(x, v, sigma, sigma_next)


class DPMSolverPP:
    """DPM-Solver++ (Lu et al. 2022) on the predicted clean sample, α = 1 − σ: first order
    ``x' = (σ'/σ)·x − α'·(e^{−h} − 1)·x̂0`` with h the step in log(α/σ); second order (multistep,
    midpoint, as MixGRPO-Flash) adds half the divided difference of x̂0 with the previous step. The
    step to σ' = 0 returns x̂0, and a step without a usable previous one (none, or one at σ = 1) is
    first order."""

    def __init__(self, *, order: Annotated[Literal[1, 2], Doc(
            "1: DDIM's step in the data-prediction form; 2: multistep midpoint with the previous x̂0")] = 2) -> None:
        self.order = order

    @property
    def uses_previous(self) -> bool:
        return self.order == 2

    def step(self, x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             sigma_next: torch.Tensor, previous: Previous | None) -> torch.Tensor:
        if previous is None or self.order == 1:
            return dpm_solver_step(x, x0, sigma, sigma_next)
        return dpm_solver_step(x, x0, sigma, sigma_next, previous.x0, previous.sigma)
