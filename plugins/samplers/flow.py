"""The built-in samplers of flow-matching models: Dance-SDE (DanceGRPO), Flow-SDE and CPS (Flow-GRPO),
and the deterministic ODE."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch

from grpo.core.sampler import EulerODE, block_mean, draw_noise, gaussian_log_prob, sigma_grid
from grpo.core.schema import Doc, Range

Steps = Annotated[int, Range(ge=1, le=1000), Doc("number of denoising steps T")]
Shift = Annotated[float, Range(gt=0), Doc("σ-grid shift s (1 = none; 3 for FLUX in the reference)")]
NoiseBlock = Annotated[int, Range(ge=1, le=64), Doc(
    "exploration noise drawn once per b×b tile of the latent (1 = independent per element): fewer, "
    "coarser directions for the policy gradient to average over; must divide the latent's height and width")]


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


class _GridSampler:
    stochastic = True
    noise_scales_with_step = True  # τ = g·√Δ: a noise level times the root of the step size

    def __init__(self, steps: int, shift: float, noise_block: int = 1) -> None:
        self.steps, self.shift, self.noise_block = steps, shift, noise_block
        self.times: Callable[[int], Sequence[float]] | None = None  # the model's grid, when it has one

    def sigmas(self) -> torch.Tensor:
        return sigma_grid(self.steps, self.shift, self.times)

    def draw_noise(self, counts: torch.Tensor, shape: tuple[int, ...],
                   generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        """One standard normal draw per noise_block² tile (per element for 1)."""
        return draw_noise(counts, shape, generator, self.noise_block)

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The density of the tile means of x − μ, the draws the noise was made of."""
        return gaussian_log_prob(x, mean, std, self.noise_block)


class DanceSDE(_GridSampler):
    """DanceGRPO's SDE: μ = x + Δ·v − ½η²Δ·s with the score s from x̂0; τ = η·sqrt(σ_k − σ_{k+1})."""

    def __init__(
        self,
        *,
        steps: Steps = 16,
        shift: Shift = 1.0,
        eta: Annotated[float, Range(gt=0), Doc("noise level η")] = 0.3,
        noise_block: NoiseBlock = 1,
    ) -> None:
        super().__init__(steps, shift, noise_block)
        self.eta = eta

    def step(self, x, v, sigma, sigma_next):
        x, v = x.float(), v.float()
        s, delta = _bcast(sigma, x), _bcast(sigma_next - sigma, x)
        x0 = x - s * v
        score = -(x - (1.0 - s) * x0) / (s * s)
        mean = x + delta * v - 0.5 * self.eta**2 * delta * score
        std = (self.eta * torch.sqrt((sigma - sigma_next).clamp_min(0.0))).clamp_min(1e-8)
        return mean, std


class FlowSDE(_GridSampler):
    """Flow-GRPO's SDE: g = a·sqrt(σ/(1−σ)), τ = g·sqrt(−Δ). At σ = 1, where g is undefined,
    Flow-GRPO's released code replaces σ by σ_1 in the denominator only (``first_step =
    "flow-grpo"``, the default: τ_0 = a exactly); ``"sigma1"`` evaluates g at σ_1 instead, the
    noise level of the next step (τ_0 = a·sqrt(σ_1))."""

    def __init__(
        self,
        *,
        steps: Steps = 16,
        shift: Shift = 1.0,
        noise_level: Annotated[float, Range(gt=0), Doc("noise level a")] = 0.7,
        noise_block: NoiseBlock = 1,
        first_step: Annotated[Literal["flow-grpo", "sigma1"], Doc(
            "g at σ = 1: σ_1 in the denominator only (Flow-GRPO's code), or g(σ_1)")] = "flow-grpo",
    ) -> None:
        super().__init__(steps, shift, noise_block)
        self.noise_level, self.first_step = noise_level, first_step

    def step(self, x, v, sigma, sigma_next):
        x, v = x.float(), v.float()
        sig = self.sigmas()
        first = sigma >= 1.0
        below = torch.where(first, torch.full_like(sigma, float(sig[1])), sigma)
        above = below if self.first_step == "sigma1" else sigma
        g = self.noise_level * torch.sqrt(above / (1.0 - below))
        s, delta, gb = _bcast(sigma, x), _bcast(sigma_next - sigma, x), _bcast(g, x)
        mean = x * (1.0 + gb**2 * delta / (2.0 * s)) + v * delta * (1.0 + gb**2 * (1.0 - s) / (2.0 * s))
        std = (g * torch.sqrt((sigma - sigma_next).clamp_min(0.0))).clamp_min(1e-8)
        return mean, std


class CPS(_GridSampler):
    """Coefficients-preserving sampling (Flow-GRPO's ``sde_type = "cps"``): from the predicted clean
    sample x̂0 = x − σ·v and noise x̂1 = x + (1 − σ)·v, the next state is
    μ = (1 − σ')·x̂0 + sqrt(σ'² − τ²)·x̂1 plus τ·ε with τ = σ'·sin(ηπ/2), so that the coefficients of
    x0 and of the noise stay those of σ' (σ' the next noise level; the last step is deterministic).

    ``log_prob = "flow-grpo"`` scores a transition as Flow-GRPO's code does, −mean‖x' − μ‖² (the
    constants and the 1/(2τ²) scale dropped; pair it with a small clip range, 1e-5 as released);
    ``"gaussian"`` with the exact Gaussian density, like the other samplers. The last step has no
    noise (σ' = 0), so under ``"gaussian"`` it has no density to train: leave it out (the timestep-fraction pruner's
    ``ignore_last``, or the ``last-step`` pruner). τ is the whole step's standard deviation, not a
    level times √Δ: Flow-GRPO's KL in its own form is the Gaussian one here (``noise_scales_with_step``)."""

    noise_scales_with_step = False

    def __init__(
        self,
        *,
        steps: Steps = 10,
        shift: Shift = 1.0,
        eta: Annotated[float, Range(gt=0, le=1), Doc("noise level η (τ = σ'·sin(ηπ/2))")] = 0.8,
        noise_block: NoiseBlock = 1,
        log_prob: Annotated[Literal["flow-grpo", "gaussian"], Doc(
            "−mean‖x' − μ‖² as Flow-GRPO's code, or the exact Gaussian density")] = "flow-grpo",
    ) -> None:
        super().__init__(steps, shift, noise_block)
        self.eta, self.log_prob_form = eta, log_prob

    def step(self, x, v, sigma, sigma_next):
        x, v = x.float(), v.float()
        s, sn = _bcast(sigma, x), _bcast(sigma_next, x)
        x0, x1 = x - s * v, x + (1.0 - s) * v
        std = sigma_next * math.sin(self.eta * math.pi / 2)
        mean = (1.0 - sn) * x0 + torch.sqrt((sn**2 - _bcast(std, x) ** 2).clamp_min(0.0)) * x1
        return mean, std.clamp_min(1e-8)

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if self.log_prob_form == "gaussian":
            return super().log_prob(x, mean, std)
        return -(block_mean(x.float() - mean.float(), self.noise_block) ** 2).flatten(1).mean(dim=1)


class ODE(EulerODE):
    """Every step deterministic, taken by the strategy's solver (``[strategy.solver]``, Euler by default):
    no step has a log-probability, so only an objective that reads none trains on its rollouts
    (DiffusionNFT's), and a tree that splits is refused (its children would be identical)."""

    def __init__(self, *, steps: Steps = 16, shift: Shift = 1.0) -> None:
        super().__init__(steps, shift)
