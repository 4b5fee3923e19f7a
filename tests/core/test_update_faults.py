"""A non-finite edge costs that edge, not the optimizer step: an edge whose advantage or stored
log-probability is not finite, or whose log-ratio overflows, trains like the batch without it and
is counted (`update/skipped_edges`); a step is dropped only when its gradient is not finite for
another reason, and that is counted too (`update/skipped_steps`)."""

from __future__ import annotations

import copy

import pytest
import torch
from support import clipped_update

from grpo.core.backend import OptimizerConfig
from grpo.core.edges import EdgeUnits
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.backends.plain import TorchBackend
from grpo.plugins.samplers.flow import DanceSDE
from grpo.plugins.trees.topologies import Fan
from grpo.testing import tiny_policy, tiny_rollout


@pytest.fixture(scope="module")
def setting():
    sampler = DanceSDE(steps=3, eta=0.5)
    ro, cond, policy = tiny_rollout(Fan(group_size=4).plan(3), sampler=sampler)
    gen = torch.Generator().manual_seed(3)
    adv = Advantages([torch.randn(ro.states[k + 1].shape[0], generator=gen) for k in range(ro.steps)])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    return sampler, ro, cond, policy, batch


def train(setting, batch, *, poison_grad: bool = False):
    """The trained weights after one update of a fresh copy of the policy, and its statistics."""
    sampler, ro, cond, base, _ = setting
    policy = copy.deepcopy(base)
    params = policy.trainable_parameters()
    backend = TorchBackend(device="cpu")
    backend.setup(policy.denoiser, params, OptimizerConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                                                            grad_clip=1.0))
    if poison_grad:  # a gradient that is not finite for a reason no edge shows
        params[0].register_hook(lambda g: torch.full_like(g, float("inf")))
    stats = clipped_update(policy, sampler, backend, ro, cond, batch, clip_range=1e-3)
    return [p.detach().clone() for p in params], stats


def poisoned(batch: EdgeUnits, i: int, how: str) -> EdgeUnits:
    out = batch.take(torch.arange(len(batch)))
    if how == "advantage":
        out.advantage[i] = float("nan")
    elif how == "log-prob":
        out.old_log_prob[i] = float("nan")
    else:  # the re-evaluated log-probability exceeds the stored one by 100 nats: the ratio overflows
        out.old_log_prob[i] -= 100.0
    return out


@pytest.mark.parametrize("how", ["advantage", "log-prob", "log-ratio"])
def test_one_poisoned_edge_costs_only_that_edge(setting, how):
    """A stored value that is not finite is known before the step: the update equals that of the batch
    without the edge. A log-ratio that overflows is known only after the edge's forward, when the
    step's mean is already fixed: the edge then counts in the mean with no gradient, exactly like
    an edge of advantage 0."""
    batch = setting[4]
    i = len(batch) // 2
    if how == "log-ratio":
        without = batch.take(torch.arange(len(batch)))
        without.advantage[i] = 0.0
    else:
        without = batch.take(torch.tensor([j for j in range(len(batch)) if j != i]))
    want, clean = train(setting, without)
    got, stats = train(setting, poisoned(batch, i, how))
    assert clean.skipped == 0 and stats.skipped == 1 and stats.skipped_steps == 0
    assert stats.optimizer_steps == 1 and torch.isfinite(torch.tensor(stats.grad_norm))
    assert max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True)) < 1e-6
    moved = max(float((a - b).abs().max()) for a, b in zip(got, setting[3].trainable_parameters(), strict=True))
    assert moved > 1e-5  # it did train


def test_a_step_whose_gradient_is_not_finite_for_another_reason_is_dropped_and_counted(setting):
    got, stats = train(setting, setting[4], poison_grad=True)
    assert stats.skipped_steps == 1 and stats.optimizer_steps == 0 and stats.skipped == 0
    base = setting[3].trainable_parameters()
    assert all(torch.equal(a, b) for a, b in zip(got, base, strict=True))  # nothing applied


def test_the_engine_logs_skipped_edges_and_steps(tmp_path):
    from grpo.testing import run_tiny_recipe

    records = run_tiny_recipe(
        __import__("pathlib").Path(__file__).resolve().parents[2] / "recipes" / "shapes_dance.toml", tmp_path / "r",
        ["strategy.step_window=[]"])
    train_record = next(r for r in records if r["kind"] == "train")
    assert train_record["update/skipped_edges"] == 0 and train_record["update/skipped_steps"] == 0
    tiny_policy()  # the shared tiny model is still loadable after the run
