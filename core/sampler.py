"""Samplers: the σ grid and one stochastic step of a flow-matching model.

Convention (SD3, FLUX, Wan): ``x_σ = (1 − σ)·x0 + σ·ε`` and the model predicts ``v = ε − x0``.
A step goes from σ_k to σ_{k+1} and is a Gaussian with mean μ_k and standard deviation τ_k.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def sigma_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """(steps + 1,) fp64→fp32 noise levels: ``u_k = 1 − k/T``, ``σ_k = s·u_k / (1 + (s − 1)·u_k)``.

    Equals the sigmas of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)`` with a final 0.
    """
    u = 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps
    return (shift * u / (1.0 + (shift - 1.0) * u)).to(torch.float32)


def tile_grid(height: int, width: int, block: int) -> tuple[int, int]:
    """(rows, columns) of ``block``×``block`` tiles in a height×width plane; ValueError if they do not tile it."""
    if height % block or width % block:
        raise ValueError(f"a {block}×{block} noise block does not tile a {height}×{width} latent")
    return height // block, width // block


def block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Means of ``x`` (N, ..., H, W) over non-overlapping ``block``×``block`` tiles of its last two axes."""
    if block == 1:
        return x
    h, w = x.shape[-2:]
    grid = tile_grid(h, w, block)
    flat = x.reshape(x.shape[0], -1, h, w)
    return torch.nn.functional.avg_pool2d(flat, block).reshape(*x.shape[:-2], *grid)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, block: int = 1) -> torch.Tensor:
    """Per-sample log-density of ``x`` under N(mean, std²), **averaged** over all non-batch elements.

    With ``block`` > 1 the noise is one draw per ``block``×``block`` tile of the last two axes (see
    `Sampler.noise_block`): the density is that of the tile means of ``x − mean``, each N(0, std²),
    averaged over the tiles.

    Args:
        x, mean: (N, ...) tensors; computed in fp32.
        std: (N,) or broadcastable to x.
        block: tile size of the noise (1 = independent noise per element).
    Returns:
        (N,) fp32.
    """
    residual = block_mean(x.float() - mean.float(), block)
    std = std.float()
    while std.dim() < residual.dim():
        std = std.unsqueeze(-1)
    z = residual / std
    lp = -0.5 * z * z - torch.log(std) - LOG_SQRT_2PI
    return lp.flatten(1).mean(dim=1)


@runtime_checkable
class Sampler(Protocol):
    """One step's Gaussian of a flow-matching sampler.

    Attributes:
        steps: number of denoising steps T.
        stochastic: False for a purely deterministic sampler (no step can be trained).
        noise_block: optional; the exploration noise of a step is one draw per
            ``noise_block``×``noise_block`` tile of the latent's last two axes (1, the default when
            the attribute is absent: independent noise per element).
    """

    steps: int
    stochastic: bool

    def sigmas(self) -> torch.Tensor:
        """(T + 1,) fp32 noise levels from 1 to 0."""
        ...

    def step(
        self, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean μ (N, ...) and standard deviation τ (N,) of x_{k+1} given x_k and v_k.

        ``sigma`` and ``sigma_next`` are (N,) fp32. τ is 0 for a deterministic step.
        """
        ...


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """The deterministic (ODE) step ``x + Δ·v``."""
    delta = (sigma_next - sigma).view(-1, *([1] * (x.dim() - 1)))
    return x + delta * v


class EulerODE:
    """Deterministic Euler steps over the shifted σ grid (evaluation; never trained)."""

    stochastic = False

    def __init__(self, steps: int, shift: float = 1.0) -> None:
        self.steps, self.shift = steps, shift

    def sigmas(self) -> torch.Tensor:
        return sigma_grid(self.steps, self.shift)

    def step(
        self, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return euler_step(x.float(), v.float(), sigma, sigma_next), torch.zeros_like(sigma)
