"""Samplers: the σ grid and one stochastic step of a flow-matching model.

Convention (SD3, FLUX, Wan): ``x_σ = (1 − σ)·x0 + σ·ε`` and the model predicts ``v = ε − x0``.
A step goes from σ_k to σ_{k+1} and is a Gaussian with mean μ_k and standard deviation τ_k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def uniform_times(steps: int) -> list[float]:
    """The unshifted times ``u_k = 1 − k/T`` of the plain grid (fp64 as Python floats)."""
    return (1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps).tolist()


def sigma_grid(steps: int, shift: float = 1.0, times: Callable[[int], Sequence[float]] | None = None) -> torch.Tensor:
    """(steps + 1,) fp64→fp32 noise levels ``σ_k = s·u_k / (1 + (s − 1)·u_k)`` over the unshifted times
    ``times(steps)``: by default ``u_k = 1 − k/T``, the plain shifted grid. A model whose diffusers
    pipeline samples on another grid gives its times (``Policy.sigma_schedule``): SD3.5's scheduler at
    shift 3 and T = 10 samples 1.0, 0.9601, …, 0.278, 0.0089, 0, where the plain grid has 1.0, 0.9643,
    …, 0.4286, 0.25, 0.
    """
    return shifted_sigmas((times or uniform_times)(steps), shift)


def shifted_sigmas(times: Sequence[float], shift: float = 1.0) -> torch.Tensor:
    """fp32 σ of unshifted times u (fp64 → fp32): ``σ = s·u / (1 + (s − 1)·u)``, the map of `sigma_grid`."""
    u = torch.tensor(list(times), dtype=torch.float64)
    return (shift * u / (1.0 + (shift - 1.0) * u)).to(torch.float32)


def tile_grid(height: int, width: int, block: int) -> tuple[int, int]:
    """(rows, columns) of ``block``×``block`` tiles in a height×width plane; ValueError if they do not tile it."""
    if height % block or width % block:
        raise ValueError(f"a {block}×{block} noise block does not tile a {height}×{width} latent")
    return height // block, width // block


def check_noise_block(latent_shape: tuple[int, ...], block: int) -> None:
    """UserError (``sampler.noise_block``, with the sizes that fit) if `block` does not tile the latent."""
    from .errors import UserError

    height, width = tuple(latent_shape)[-2:]
    try:
        tile_grid(height, width, block)
    except ValueError as e:
        divisors = [b for b in range(1, min(height, width) + 1) if height % b == 0 and width % b == 0]
        raise UserError(str(e), where="sampler.noise_block", hint=f"use one of {divisors}") from None


def draw_noise(counts: torch.Tensor, shape: tuple[int, ...],
               generator: torch.Generator | Sequence[torch.Generator], block: int = 1) -> torch.Tensor:
    """Standard normal noise (fp32, CPU) for ``counts[t]`` nodes of each tree t (a tree's nodes are
    contiguous), from one generator, or one generator per tree.

    With ``block`` > 1, one draw per ``block``×``block`` tile of the last two axes, repeated over
    the tile (each element still has unit variance).
    """
    total = int(counts.sum())
    if block > 1:
        *lead, h, w = shape
        coarse = draw_noise(counts, (*lead, *tile_grid(h, w, block)), generator)
        return coarse.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    if isinstance(generator, torch.Generator):
        return torch.randn((total, *shape), generator=generator)
    if len(generator) != counts.numel():
        raise ValueError(f"{len(generator)} generators for {counts.numel()} trees")
    return torch.cat([torch.randn((int(c), *shape), generator=g) for c, g in zip(counts, generator, strict=True)])


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
    """One step's Gaussian of a flow-matching sampler; it also draws its exploration noise and
    scores transitions with the matching density, so that rollout and update agree.

    Attributes:
        steps: number of denoising steps T.
        stochastic: False for a purely deterministic sampler (no step can be trained).
        shift: optional (default 1.0); the σ grid's timestep shift, which evaluation's ODE reuses.
        times: optional (default None); the unshifted times of a T-step grid as a function of T
            (None: ``u_k = 1 − k/T``). The engine sets it, and the shift, to the model's pipeline grid
            (``follow_model_grid``): a sampler's ``sigmas()`` is ``sigma_grid(steps, shift, times)``.
        noise_scales_with_step: optional (default True); whether τ is a noise level times √Δ (Flow-SDE,
            Dance-SDE), which Flow-GRPO's form of the KL divides out, or the whole step's (CPS).
        noise_block: optional (default 1); the exploration noise of a step is one draw per
            ``noise_block``×``noise_block`` tile of the latent's last two axes (1: independent
            noise per element).

    ``draw_noise`` and ``log_prob`` are optional too: by default they are `draw_noise` and
    `gaussian_log_prob` of this module with the sampler's ``noise_block``.
    """

    steps: int
    stochastic: bool
    shift: float
    times: Callable[[int], Sequence[float]] | None
    noise_scales_with_step: bool
    noise_block: int

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

    def draw_noise(self, counts: torch.Tensor, shape: tuple[int, ...],
                   generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
        """Standard normal noise (Σ counts, *shape) for ``counts[t]`` nodes of each tree t."""
        ...

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """(N,) fp32 log-density of transitions to `x` under N(mean, std²), as the noise was drawn."""
        ...


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """The deterministic (ODE) step ``x + Δ·v``."""
    delta = (sigma_next - sigma).view(-1, *([1] * (x.dim() - 1)))
    return x + delta * v


def dpm_solver_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                    prev_x0: torch.Tensor | None = None, prev_sigma: torch.Tensor | None = None) -> torch.Tensor:
    """One deterministic DPM-Solver++ step of a flow-matching model (``x_σ = (1 − σ)·x0 + σ·ε``), in
    its data-prediction form with α = 1 − σ and λ = log(α/σ), h = λ' − λ:

    - first order: ``x' = (σ'/σ)·x − α'·(e^{−h} − 1)·x̂0``;
    - second order (multistep, midpoint), given the previous step's x̂0 at σ_prev:
      ``x' = (σ'/σ)·x − α'·(e^{−h} − 1)·(D0 + ½·D1)``, D0 = x̂0, D1 = (x̂0 − x̂0_prev)·h / (λ − λ_prev).

    The step to σ' = 0 is first order (it returns x̂0), as is one without a usable previous step
    (none, or one at σ = 1, where λ = −∞). `sigma`, `sigma_next`, `prev_sigma` are (N,).
    """
    def lam(s: torch.Tensor) -> torch.Tensor:
        return torch.log((1.0 - s.double()) / s.double())

    if bool((sigma_next <= 0).all()):
        return x0.float()
    view = (-1, *([1] * (x.dim() - 1)))
    h = lam(sigma_next) - lam(sigma)
    coef = ((1.0 - sigma_next.double()) * torch.expm1(-h)).float().view(view)
    ratio = (sigma_next / sigma).float().view(view)
    d = x0.float()
    if prev_x0 is not None and prev_sigma is not None and bool((prev_sigma < 1.0).all()):
        r = ((lam(sigma) - lam(prev_sigma)) / h).float().view(view)
        d = d + 0.5 * (x0.float() - prev_x0.float()) / r
    return ratio * x.float() - coef * d


class EulerODE:
    """Deterministic Euler steps over the shifted σ grid (evaluation; never trained)."""

    stochastic = False
    noise_block = 1

    def __init__(self, steps: int, shift: float = 1.0, times: Callable[[int], Sequence[float]] | None = None) -> None:
        self.steps, self.shift, self.times = steps, shift, times

    def sigmas(self) -> torch.Tensor:
        return sigma_grid(self.steps, self.shift, self.times)

    def step(
        self, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return euler_step(x.float(), v.float(), sigma, sigma_next), torch.zeros_like(sigma)


def follow_model_grid(sampler: Sampler, schedule: tuple[Callable[[int], Sequence[float]], float | None] | None,
                      name: str) -> None:
    """Put the model's σ grid (``Policy.sigma_schedule()``: its times and shift, None for the sampler's
    own shift; None for no grid of its own) on `sampler` (registered as `name`). UserError when the
    recipe's sampler shift contradicts the model's, or the sampler does not compute its σ from
    ``sigma_grid(steps, shift, times)``."""
    from .errors import UserError

    if schedule is None:
        return
    times, shift = schedule
    if shift is not None:
        if sampler.shift != 1.0 and abs(sampler.shift - shift) > 1e-6 * shift:
            raise UserError(f"sampler.shift is {sampler.shift:g}, but the model's pipeline samples with shift {shift:.6g}",
                            where="sampler.shift", hint="leave sampler.shift out (the pipeline's scheduler sets it), or "
                            "set model.sigma_grid = \"shifted\" to sample on the sampler's own shifted grid")
        sampler.shift = shift
    sampler.times = times
    if not torch.equal(sampler.sigmas(), sigma_grid(sampler.steps, sampler.shift, times)):
        raise UserError(f"sampler {name!r} computes its own σ grid, so it cannot sample on the model's pipeline grid",
                        where="model.sigma_grid", hint="set model.sigma_grid = \"shifted\"")
