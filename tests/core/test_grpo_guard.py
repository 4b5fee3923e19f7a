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


def _guard(policy, sampler, ro, cond, batch, bias="micro-batch"):
    """(GRPO-Guard's log-ratios, the log-probabilities, the stds) of `batch` under the policy."""
    t = reevaluate(policy, sampler, ro, cond, batch, "nominal")
    return guarded_log_ratio(policy, sampler, ro, batch, t.x_next, t.mean, t.std, bias), t.log_prob, t.std


def _moved_means(policy, sampler, ro, cond, batch):
    """(μ under the moved policy, μ_old stored by the rollout) of every edge of `batch`."""
    xs = torch.stack([ro.states[k][ro.parent[k][c]] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
    sigma, sigma_next = ro.sigmas[batch.step], ro.sigmas[batch.step + 1]
    v = policy.velocity(xs, sigma, cond.select(torch.zeros(len(batch), dtype=torch.long))).float()
    mu_new, _ = sampler.step(xs, v, sigma, sigma_next)
    mu_old = torch.stack([ro.means[k][c] for k, c in zip(batch.step.tolist(), batch.child.tolist(), strict=True)])
    return mu_new, mu_old


def _move(policy):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy as an update would
        for p in policy.trainable_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))


SAMPLERS = [FlowSDE(steps=4, noise_level=0.7), DanceSDE(steps=4, eta=0.5)]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=["flow-sde", "dance-sde"])
def test_guarded_ratio_is_the_released_line_per_step(tiny_policy, sampler):
    """The released line (flow_grpo ``train_sd3_GRPO_Guard.py`` with ``rationorm``), written out again
    on each step's edges as one micro-batch: the bias ``((μ − μ_old)²).mean(dim=())``, i.e. over the
    whole micro-batch, divided by 2s² with s the micro-batch's mean std, and ``(log p − log p_old +
    bias)·s``. The batch here mixes steps, so each step's edges are reduced apart."""
    ro, cond, batch = _setup(tiny_policy, sampler)
    with torch.no_grad():
        guard, _, _ = _guard(tiny_policy, sampler, ro, cond, batch)
    torch.testing.assert_close(guard, torch.zeros(len(batch)), atol=1e-6, rtol=0)  # on-policy: r̂ = 1
    _move(tiny_policy)
    with torch.no_grad():
        guard, lp, std = _guard(tiny_policy, sampler, ro, cond, batch)
        mu_new, mu_old = _moved_means(tiny_policy, sampler, ro, cond, batch)
        released = torch.empty(len(batch))
        for k in batch.step.unique().tolist():
            at = batch.step == k
            s = std[at].mean()
            bias = (mu_new[at] - mu_old[at]).pow(2).mean(dim=()) / (2 * s**2)
            released[at] = (lp[at] - batch.old_log_prob[at] + bias) * s
        per_edge = ((mu_new - mu_old) ** 2).flatten(1).mean(dim=1)
    assert len(batch.step.unique()) > 1 and float(per_edge.max() / per_edge.min()) > 1.5  # unequal ‖Δμ‖ per step
    assert float(guard.abs().max()) > 1e-4  # the policy moved
    torch.testing.assert_close(guard, released, atol=2e-6, rtol=1e-3)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=["flow-sde", "dance-sde"])
def test_the_per_sample_reading_takes_each_edges_own_shift(tiny_policy, sampler):
    """``guard_bias = "sample"``: ``(log p − log p_old + ‖Δμ_i‖²/(2s²))·s`` with each edge's own ‖Δμ_i‖²;
    it differs from the released micro-batch mean wherever the edges of a step moved unequally."""
    ro, cond, batch = _setup(tiny_policy, sampler)
    _move(tiny_policy)
    with torch.no_grad():
        guard, lp, std = _guard(tiny_policy, sampler, ro, cond, batch, bias="sample")
        shared, _, _ = _guard(tiny_policy, sampler, ro, cond, batch)
        mu_new, mu_old = _moved_means(tiny_policy, sampler, ro, cond, batch)
        bias = ((mu_new - mu_old) ** 2).flatten(1).mean(dim=1) / (2 * std**2)
        per_sample = (lp - batch.old_log_prob + bias) * std
    torch.testing.assert_close(guard, per_sample, atol=2e-6, rtol=1e-3)
    assert float((guard - shared).abs().max()) > 1e-5


def test_the_shared_term_carries_gradient_to_every_edge_of_its_step():
    """B is a mean over the step's edges, so each edge's loss moves with the others' means (as the
    released line's scalar bias does): a hand example on a 2-edge step and a 1-edge step, labelled
    2 and 0 (any step numbers)."""
    from grpo.plugins.objectives.clipped_ratio import step_means

    values = torch.tensor([1.0, 3.0, 5.0], requires_grad=True)
    means = step_means(values, torch.tensor([2, 2, 0]))
    torch.testing.assert_close(means, torch.tensor([2.0, 2.0, 5.0]))
    means[0].backward()
    torch.testing.assert_close(values.grad, torch.tensor([0.5, 0.5, 0.0]))


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
