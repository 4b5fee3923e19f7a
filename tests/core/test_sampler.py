import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from grpo.core.sampler import gaussian_log_prob, sigma_grid
from grpo.plugins.samplers.flow import ODE, DanceSDE, FlowSDE


@pytest.mark.parametrize("steps", [4, 16, 20])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sigma_grid_equals_diffusers_scheduler(steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    # diffusers' flow pipelines pass this grid; the scheduler shifts it and appends σ = 0
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps))
    ours = sigma_grid(steps, shift)
    assert ours.shape == (steps + 1,)
    torch.testing.assert_close(ours, sched.sigmas.float(), atol=1e-6, rtol=0)
    assert ours[0] == 1.0 and ours[-1] == 0.0


def test_log_prob_is_the_element_mean_of_normal_log_density():
    torch.manual_seed(0)
    x, mean = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    std = torch.rand(5) + 0.1
    expected = torch.stack(
        [torch.distributions.Normal(mean[i], std[i]).log_prob(x[i]).mean() for i in range(5)]
    )
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 3, 2, 8, 12)])
def test_block_log_prob_is_the_normal_density_of_tile_means(shape):
    torch.manual_seed(0)
    x, mean = torch.randn(shape), torch.randn(shape)
    std = torch.rand(shape[0]) + 0.1
    b = 4
    expected = []
    for i in range(shape[0]):
        r = (x[i] - mean[i]).reshape(-1, *shape[-2:])
        tiles = [r[c, y:y + b, z:z + b].mean() for c in range(r.shape[0])
                 for y in range(0, shape[-2], b) for z in range(0, shape[-1], b)]
        expected.append(torch.distributions.Normal(0.0, std[i]).log_prob(torch.stack(tiles)).mean())
    torch.testing.assert_close(gaussian_log_prob(x, mean, std, block=b), torch.stack(expected), atol=1e-6, rtol=1e-6)
    # a block of 1 is the element-wise density
    torch.testing.assert_close(gaussian_log_prob(x, mean, std, block=1), gaussian_log_prob(x, mean, std))
    with pytest.raises(ValueError, match="does not tile"):
        gaussian_log_prob(x, mean, std, block=3)


def _step_inputs():
    torch.manual_seed(1)
    sig = sigma_grid(10, 3.0)
    k = torch.tensor([0, 3, 9])
    return torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8), sig[k], sig[k + 1]


@pytest.mark.parametrize("sampler", [DanceSDE(steps=10, shift=3.0, eta=0.3), FlowSDE(steps=10, shift=3.0, noise_level=0.7)])
def test_sampler_log_prob_matches_torch_normal(sampler):
    x, v, s, sn = _step_inputs()
    mean, std = sampler.step(x, v, s, sn)
    x_next = mean + std.view(-1, 1, 1, 1) * torch.randn_like(mean)
    ours = gaussian_log_prob(x_next, mean, std)
    ref = torch.stack([torch.distributions.Normal(mean[i], std[i]).log_prob(x_next[i]).mean() for i in range(3)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-6)


def test_dance_sde_closed_form():
    x, v, s, sn = _step_inputs()
    eta = 0.3
    mean, std = DanceSDE(steps=10, shift=3.0, eta=eta).step(x, v, s, sn)
    for i in range(3):
        si, sni = float(s[i]), float(sn[i])
        d = sni - si
        x0 = x[i] - si * v[i]
        score = -(x[i] - (1 - si) * x0) / si**2
        torch.testing.assert_close(mean[i], x[i] + d * v[i] - 0.5 * eta**2 * d * score, atol=1e-5, rtol=1e-5)
        assert math.isclose(float(std[i]), eta * math.sqrt(si - sni), rel_tol=1e-5)


@pytest.mark.parametrize("first_step", ["flow-grpo", "sigma1"])
def test_flow_sde_closed_form_and_sigma_one_substitution(first_step):
    """Flow-GRPO's code replaces σ = 1 by σ_1 in the denominator of sqrt(σ/(1 − σ)) only: the first
    step's τ is then a·sqrt(1/(1 − σ_1))·sqrt(1 − σ_1) = a exactly (0.700 at T = 10, shift 3); the
    "sigma1" reading gives a·sqrt(σ_1) (0.687)."""
    x, v, s, sn = _step_inputs()
    a = 0.7
    sampler = FlowSDE(steps=10, shift=3.0, noise_level=a, first_step=first_step)
    mean, std = sampler.step(x, v, s, sn)
    sig1 = float(sigma_grid(10, 3.0)[1])
    for i in range(3):
        si, sni = float(s[i]), float(sn[i])
        below = sig1 if si >= 1.0 else si
        above = below if first_step == "sigma1" else si
        g = a * math.sqrt(above / (1 - below))
        d = sni - si
        expect = x[i] * (1 + g * g * d / (2 * si)) + v[i] * d * (1 + g * g * (1 - si) / (2 * si))
        torch.testing.assert_close(mean[i], expect, atol=1e-5, rtol=1e-5)
        assert math.isclose(float(std[i]), g * math.sqrt(-d), rel_tol=1e-5)
    if float(s[0]) >= 1.0:
        first = round(float(std[0]), 3)
        assert first == (0.700 if first_step == "flow-grpo" else round(a * math.sqrt(sig1), 3))


def test_ode_is_euler_and_deterministic():
    x, v, s, sn = _step_inputs()
    mean, std = ODE(steps=10, shift=3.0).step(x, v, s, sn)
    torch.testing.assert_close(mean, x + (sn - s).view(-1, 1, 1, 1) * v)
    assert torch.all(std == 0)
    assert ODE().stochastic is False


@pytest.mark.parametrize("eta", [0.5, 0.8])
def test_cps_closed_form(eta):
    """CPS against its formulas, written out: x̂0 = x − σv, x̂1 = x + (1 − σ)v, τ = σ'·sin(ηπ/2),
    μ = (1 − σ')·x̂0 + √(σ'² − τ²)·x̂1; its released log-probability −mean‖x' − μ‖², and the exact
    Gaussian one equal to torch's Normal."""
    from torch.distributions import Normal

    from grpo.plugins.samplers.flow import CPS

    x, v, s, sn = _step_inputs()
    sampler = CPS(steps=10, shift=3.0, eta=eta)
    mean, std = sampler.step(x, v, s, sn)
    for i in range(3):
        si, sni = float(s[i]), float(sn[i])
        tau = sni * math.sin(eta * math.pi / 2)
        x0, x1 = x[i] - si * v[i], x[i] + (1 - si) * v[i]
        torch.testing.assert_close(mean[i], (1 - sni) * x0 + math.sqrt(max(sni**2 - tau**2, 0.0)) * x1,
                                   atol=1e-5, rtol=1e-5)
        assert math.isclose(float(std[i]), max(tau, 1e-8), rel_tol=1e-5)
    x_next = mean + std.view(-1, 1, 1, 1) * torch.randn_like(mean)
    torch.testing.assert_close(sampler.log_prob(x_next, mean, std), -((x_next - mean) ** 2).flatten(1).mean(1))
    exact = CPS(steps=10, shift=3.0, eta=eta, log_prob="gaussian").log_prob(x_next, mean, std)
    torch.testing.assert_close(exact[:2], Normal(mean[:2], std[:2].view(-1, 1, 1, 1)).log_prob(x_next[:2]).flatten(1).mean(1),
                               atol=1e-4, rtol=1e-5)
    assert math.isclose(float(std[2]), 1e-8, rel_tol=1e-6)  # the last step (σ' = 0) has no noise


def test_cps_keeps_the_sampler_contract():
    from grpo.plugins.samplers.flow import CPS
    from grpo.testing import check_sampler

    check_sampler(CPS(steps=4))  # the released log-probability: on-policy ratio 1 on every step
