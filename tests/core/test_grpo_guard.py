"""GRPO-Guard's ratio: against the released formula (log-probabilities plus the mean-shift term,
times the step's std), exactly 1 on-policy, its 1/Δσ step weights, and a run with it on."""

import pytest
import torch
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.edges import EdgeUnits, reevaluate
from grpo.core.objective import Keep
from grpo.core.runlog import read_metrics
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.objectives.clipped_ratio import edge_losses, guarded_log_ratio, step_sizes
from grpo.plugins.samplers.flow import DanceSDE, FlowSDE
from grpo.plugins.trees.topologies import Fan
from grpo.testing import tiny_rollout

PROMPTS = ["two red circles on a gray background"]


def _setup(policy, sampler):
    ro, cond, _ = tiny_rollout(Fan(group_size=3).plan(sampler.steps), sampler=sampler, prompts=PROMPTS, policy=policy,
                               max_batch=8, keep=Keep(log_prob=True, means=True, states=True))
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    return ro, cond, EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))


def _guard(policy, sampler, ro, cond, batch):
    """(GRPO-Guard's log-ratios, the log-probabilities, the stds) of `batch` under the policy."""
    t = reevaluate(policy, sampler, ro, cond, batch, "nominal")
    return guarded_log_ratio(policy, sampler, ro, batch, t.x_next, t.mean, t.std), t.log_prob, t.std


@pytest.mark.parametrize("sampler", [FlowSDE(steps=4, noise_level=0.7), DanceSDE(steps=4, eta=0.5)],
                         ids=["flow-sde", "dance-sde"])
def test_guarded_ratio_is_the_released_formula(tiny_policy, sampler):
    ro, cond, batch = _setup(tiny_policy, sampler)
    with torch.no_grad():
        guard, _, _ = _guard(tiny_policy, sampler, ro, cond, batch)
    torch.testing.assert_close(guard, torch.zeros(len(batch)), atol=1e-6, rtol=0)  # on-policy: r̂ = 1
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy as an update would
        for p in tiny_policy.trainable_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
        guard, lp, std = _guard(tiny_policy, sampler, ro, cond, batch)
        # the released code: μ_new from the step's mean, bias = mean((μ_new − μ_old)²) / (2 s²),
        # log r̂ = (log p_new − log p_old + bias) · s
        xs = torch.stack([ro.states[k][ro.parent[k][c]] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
        sigma, sigma_next = ro.sigmas[batch.step], ro.sigmas[batch.step + 1]
        v = tiny_policy.velocity(xs, sigma, cond.select(torch.zeros(len(batch), dtype=torch.long))).float()
        mu_new, _ = sampler.step(xs, v, sigma, sigma_next)
        mu_old = torch.stack([ro.means[k][c] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
        bias = ((mu_new - mu_old) ** 2).flatten(1).mean(dim=1) / (2 * std**2)
        released = (lp - batch.old_log_prob + bias) * std
    assert float(guard.abs().max()) > 1e-4  # the policy moved
    torch.testing.assert_close(guard, released, atol=2e-6, rtol=1e-3)


def test_step_weights_divide_the_clipped_term_by_the_sigma_step():
    log_ratio, adv = torch.tensor([0.0, 0.5]), torch.tensor([1.0, -2.0])
    kl, weight = torch.tensor([0.2, 0.4]), torch.tensor([10.0, 4.0])
    loss, ratio, finite = edge_losses(torch.zeros(2), torch.zeros(2), adv, kl, 0.1, 0.5, log_ratio=log_ratio,
                                      weight=weight)
    # edge 0: −1·1 = −1, ×10, + 0.5·0.2; edge 1: max(2·e^0.5, 2·1.1) = 3.297, ×4, + 0.5·0.4
    torch.testing.assert_close(loss, torch.tensor([-10.0 + 0.1, 4 * 2 * float(torch.tensor(0.5).exp()) + 0.2]))
    assert finite.all() and torch.allclose(ratio, log_ratio.exp())


def test_step_sizes_are_the_sigma_steps(tiny_policy):
    sampler = FlowSDE(steps=4, shift=3.0)
    ro, _, batch = _setup(tiny_policy, sampler)
    sig = sampler.sigmas()
    torch.testing.assert_close(step_sizes(ro, batch), sig[batch.step] - sig[batch.step + 1])


def test_a_run_with_grpo_guard(tiny_model_dir, tmp_path):
    from pathlib import Path

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "shapes_flowgrpo.toml")
    sets = [f"model.path='{tiny_model_dir}'", "train.iterations=1", "train.prompts_per_iteration=2",
            "strategy.group_size=3", "sampler.steps=4", "train.optimizer_steps=1", "eval.every=0",
            "strategy.grpo_guard=true", "strategy.clip_range=4e-6", "strategy.kl_beta=0"]
    result = CliRunner().invoke(app, ["run", recipe, *[x for s in sets for x in ("--set", s)], "--out",
                                      str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    train = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"][0]
    assert train["update/ratio_mean"] == pytest.approx(1.0, abs=1e-6) and train["update/grad_norm"] > 0
