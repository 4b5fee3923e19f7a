"""The second-order DPM-Solver++ of the Flash variants: against diffusers' own multistep scheduler
with its flow-matching options, against the exact solution of a Gaussian's flow ODE, and the
compressed plans' costs against a brute-force count of MixGRPO-Flash's released schedule."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.edges import EdgeUnits, reevaluate
from grpo.core.rollout import plan_sigmas
from grpo.core.sampler import dpm_solver_step, sigma_grid
from grpo.core.solver import Previous
from grpo.core.tree import Advantages, EdgeSet, TreePlan, compress_tail
from grpo.plugins.samplers.flow import FlowSDE
from grpo.plugins.solvers.solvers import DPMSolverPP, Euler
from grpo.testing import check_solver, strategy_parts, tiny_rollout

MU, S = 0.7, 0.3  # data x0 ~ N(MU, S²) per coordinate


def gaussian_x0(x, sigma):
    """E[x0 | x_σ = x] for Gaussian data: the exact denoiser of the flow x_σ = (1 − σ)·x0 + σ·ε."""
    var = (1 - sigma) ** 2 * S**2 + sigma**2
    return MU + (1 - sigma) * S**2 / var * (x - (1 - sigma) * MU)


def gaussian_v(x, sigma):
    x0 = gaussian_x0(x, sigma)
    return (x - (1 - sigma) * x0) / sigma - x0


def exact(x, sigma, sigma_to):
    """The ODE keeps the standardised coordinate (x − (1 − σ)·μ) / sd(σ)."""
    def sd(s):
        return math.sqrt((1 - s) ** 2 * S**2 + s**2)
    return (1 - sigma_to) * MU + sd(sigma_to) / sd(sigma) * (x - (1 - sigma) * MU)


def integrate(x, sigmas, solver):
    """The registered solver's steps on the Gaussian's exact velocity."""
    step = {"euler": Euler(), "dpm": DPMSolverPP(order=2)}[solver].step
    prev = None
    for k in range(len(sigmas) - 1):
        s, sn = sigmas[k].expand(x.shape[0]), sigmas[k + 1].expand(x.shape[0])
        v = gaussian_v(x, float(sigmas[k]))
        x0 = x - float(sigmas[k]) * v
        x, prev = step(x, v, x0, s, sn, prev).double(), Previous(x0, v, s)
    return x


def test_the_registered_solvers_keep_their_contract():
    check_solver(Euler())
    check_solver(DPMSolverPP(order=2))
    check_solver(DPMSolverPP(order=1))


def test_euler_is_the_plain_step_and_first_order_dpm_ignores_the_previous_step():
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    s, sn = torch.tensor([0.8, 0.8]), torch.tensor([0.5, 0.5])
    x0 = x - 0.8 * v
    torch.testing.assert_close(Euler().step(x, v, x0, s, sn, None), x + (sn - s).view(-1, 1, 1, 1) * v)
    prev = Previous(x0 + 1.0, v, torch.tensor([0.9, 0.9]))
    torch.testing.assert_close(DPMSolverPP(order=1).step(x, v, x0, s, sn, prev), dpm_solver_step(x, x0, s, sn))
    assert not torch.allclose(DPMSolverPP(order=2).step(x, v, x0, s, sn, prev), dpm_solver_step(x, x0, s, sn))


def test_matches_diffusers_dpm_solver_multistep_with_flow_sigmas():
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0,
                                            solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                            lower_order_final=True)
    scheduler.set_timesteps(10)
    sigmas = scheduler.sigmas.float()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    theirs, ours, prev, solver = x.clone(), x.clone(), None, DPMSolverPP(order=2)
    for k, t in enumerate(scheduler.timesteps):
        theirs = scheduler.step(gaussian_v(theirs, float(sigmas[k])), t, theirs).prev_sample
        s, sn = sigmas[k].expand(4), sigmas[k + 1].expand(4)
        v = gaussian_v(ours, float(sigmas[k]))
        x0 = ours - s.view(-1, 1) * v
        ours, prev = solver.step(ours, v, x0, s, sn, prev), Previous(x0, v, s)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_second_order_against_the_exact_solution():
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start, end = 0.9, 0.3  # the solution of the ODE between them is known in closed form
    truth = exact(x, start, end)
    errors = {}
    for solver in ("euler", "dpm"):
        for n in (8, 16, 32):
            sigmas = torch.linspace(start, end, n + 1, dtype=torch.float64)
            errors[solver, n] = float((integrate(x.clone(), sigmas, solver) - truth).abs().max())
    for n in (8, 16):
        assert 3.5 < errors["dpm", n] / errors["dpm", 2 * n] < 4.5  # second order: ×4 per halving
        assert 1.8 < errors["euler", n] / errors["euler", 2 * n] < 2.2  # first order: ×2
    assert errors["dpm", 8] < errors["euler", 32]  # measured 0.009 against 0.010


def released_flash_forwards(steps, window, ratio, splits=(), b=2, group=1):
    """Brute force from MixGRPO-Flash's released rule: the schedule keeps the steps up to the last
    stochastic one and ⌊(T − last)·ratio⌋ points after it (here at least 2); walk the tree node by node."""
    last = max([*window, *splits])
    n_post = max(int((steps - last) * ratio), 2)
    total = last + n_post
    frontier, forwards = 1, 0
    for k in range(total):
        forwards += frontier
        if k in splits:
            frontier *= b
        if k == min(window) and not splits:
            frontier *= group
    return total, forwards


@pytest.mark.parametrize("iteration", [0, 20, 100, 200, 280])
def test_mixgrpo_flash_costs_match_a_brute_force_count(iteration):
    topology = strategy_parts("mixgrpo-flash")["topology"]
    plan = topology.plan(25, iteration)
    window = list(topology.window(25, iteration))
    total, forwards = released_flash_forwards(25, window, 0.4, group=12)
    assert plan.steps == total and plan.rollout_forwards == forwards
    assert plan.stochastic_edges == 12 * len(window)
    # the released numbers of model forwards per chain: 11 at the first window, 12, 14, 17 and 20 later
    assert plan.steps == {0: 11, 20: 12, 100: 14, 200: 17, 280: 20}[iteration]


def test_branch_mix_flash_costs_match_a_brute_force_count():
    plan = strategy_parts("branchgrpo-mix", flash_ratio=0.4)["topology"].plan(20)
    total, forwards = released_flash_forwards(20, range(4), 0.4, splits=(0, 3, 6, 9))
    assert (plan.steps, plan.rollout_forwards) == (total, forwards) == (13, 91)
    assert plan.split_steps == (0, 3, 6, 9) and plan.stochastic_edges == 34  # training is Mix's own


def test_compressed_grid_by_hand():
    window = TreePlan((1, 4) + (1,) * 8, (1.0,) * 10, (False, True, True) + (False,) * 7)
    plan = compress_tail(window, 0.4)  # last = 2: ⌊8·0.4⌋ = 3 points from u = 0.7 to 0
    assert plan.times == pytest.approx((1.0, 0.9, 0.8, 0.7, 0.35, 0.0))
    assert plan.solver == ("",) * 3 + ("dpm-solver++",) * 2 and plan.branch == (1, 4, 1, 1, 1)
    sigmas = plan_sigmas(FlowSDE(steps=10, shift=3.0), plan)
    torch.testing.assert_close(sigmas[:4], sigma_grid(10, 3.0)[:4])  # the trained steps keep their σ
    assert float(sigmas[4]) == pytest.approx(3 * 0.35 / (1 + 2 * 0.35)) and float(sigmas[-1]) == 0.0
    late = TreePlan((1,) * 10, (1.0,) * 10, (False,) * 8 + (True, False))
    assert compress_tail(late, 0.4) is late  # one ODE step after the window: nothing to save


@pytest.mark.parametrize("strategy,table", [("mixgrpo-flash", {"group_size": 3, "window_size": 2}),
                                            ("branchgrpo-mix", {"split_points": [0, 2], "window_size": 2,
                                                                "flash_ratio": 0.4})],
                         ids=["mixgrpo-flash", "branchgrpo-mix-flash"])
def test_flash_rollouts_stay_on_policy_and_end_clean(tiny_policy, strategy, table):
    sampler = FlowSDE(steps=10, noise_level=0.7)
    parts = strategy_parts(strategy, **table)
    split_logprob = parts["objective"].split_logprob
    plan = parts["topology"].plan(10)
    assert "dpm-solver++" in plan.solver
    ro, cond, _ = tiny_rollout(plan, sampler=sampler, prompts=["two red circles on a gray background"], seed=4,
                               split_logprob=split_logprob, policy=tiny_policy, max_batch=4)
    assert ro.final.shape == ro.states[-1].shape and torch.allclose(ro.final, ro.states[-1], atol=1e-5)
    assert all(torch.isnan(ro.log_prob[k]).all() for k in range(plan.steps) if not plan.stochastic[k])
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    lp = reevaluate(tiny_policy, sampler, ro, cond, batch, split_logprob).log_prob
    assert torch.all((torch.exp(lp - batch.old_log_prob) - 1).abs() < 1e-5)


def test_grpo_plan_counts_the_flash_recipes(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "recipes"
    for name, expected in (("shapes_mixgrpo_flash.toml", released_flash_forwards(16, range(4), 0.4, group=8)),
                           ("shapes_branch_mix_flash.toml",
                            released_flash_forwards(16, range(4), 0.4, splits=(0, 3, 6)))):
        result = CliRunner().invoke(app, ["plan", str(root / name), "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert (data["steps"], data["rollout_forwards_per_tree"]) == expected
        assert {s["mode"] for s in data["per_step"]} == {"SDE", "dpm-solver++"} | ({"euler"} if "branch" in name else set())
    assert strategy_parts("mixgrpo")["topology"].plan(25).solver == ()  # plain MixGRPO: the rollout's solver, full grid
