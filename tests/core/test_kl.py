"""The KL penalty against closed forms: torch's Gaussian KL on the noise's draws (tile means with
a noise block), and Flow-GRPO's form ‖μ − μ_ref‖²/(2σ_t²) with σ_t² = τ²/Δ (Flow-SDE) or τ² (CPS)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from grpo.core.registry import complete
from grpo.plugins.objectives.clipped_ratio import reference_kl
from grpo.plugins.samplers.flow import DanceSDE
from grpo.testing import tiny_policy


def tile_means(x: torch.Tensor, b: int) -> torch.Tensor:
    """Means over b×b tiles of the last two axes, by an explicit loop."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, h // b, w // b)
    for i in range(h // b):
        for j in range(w // b):
            out[:, :, i, j] = x[:, :, i * b:(i + 1) * b, j * b:(j + 1) * b].mean(dim=(-2, -1))
    return out


@pytest.mark.parametrize("block", [1, 4])
def test_gaussian_kl_is_torchs_on_the_noise_draws(block):
    g = torch.Generator().manual_seed(0)
    mean, mean_ref = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)
    std, delta = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.05, 0.1, 0.2])
    ours = reference_kl(tiny_policy(), complete(DanceSDE(steps=4, noise_block=block), "sampler"), mean, mean_ref, std, delta)
    mu, mu_ref = tile_means(mean, block), tile_means(mean_ref, block)
    s = std.view(-1, 1, 1, 1).expand_as(mu)
    want = kl_divergence(Normal(mu, s), Normal(mu_ref, s)).flatten(1).mean(dim=1)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)


def test_flow_grpo_kl_divides_by_its_sigma_t_without_the_step_size():
    g = torch.Generator().manual_seed(1)
    mean, mean_ref = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    std, delta = torch.tensor([0.1, 0.3]), torch.tensor([0.04, 0.1])
    ours = reference_kl(tiny_policy(), complete(DanceSDE(steps=4), "sampler"), mean, mean_ref, std, delta, "flow-grpo")
    sigma_t_sq = (std**2 / delta).view(-1, 1, 1, 1)  # Flow-GRPO's std_dev_t² (τ = σ_t·sqrt(Δ))
    want = ((mean - mean_ref) ** 2 / (2 * sigma_t_sq)).flatten(1).mean(dim=1)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)
    gaussian = reference_kl(tiny_policy(), complete(DanceSDE(steps=4), "sampler"), mean, mean_ref, std, delta)
    torch.testing.assert_close(ours, gaussian * delta)  # 1/Δ times weaker: 10-25× here


def test_flow_grpo_kl_with_cps_divides_by_the_whole_step_variance():
    """The released line under ``sde_type = "cps"``: ``((μ − μ_ref)²).mean() / (2·std_dev_t²)`` with CPS's
    std_dev_t = σ'·sin(ηπ/2), the step's whole standard deviation (no step size to divide out)."""
    from grpo.plugins.samplers.flow import CPS

    g = torch.Generator().manual_seed(2)
    mean, mean_ref = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    cps = complete(CPS(steps=10, shift=3.0, eta=0.8), "sampler")
    sig = cps.sigmas()
    sigma, sigma_next = sig[[2, 5]], sig[[3, 6]]
    _, std = cps.step(mean, torch.zeros_like(mean), sigma, sigma_next)
    std_dev_t = sigma_next * torch.sin(torch.tensor(0.8 * torch.pi / 2))
    want = ((mean - mean_ref) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t**2)
    ours = reference_kl(tiny_policy(), cps, mean, mean_ref, std, sigma - sigma_next, "flow-grpo")
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)
