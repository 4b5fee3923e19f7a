"""Rollout and update on a tiny random shapes model: on-policy ratio, batching invariance."""

import pytest
import torch

from grpo.core.edges import EdgeUnits, reevaluate
from grpo.core.tree import Advantages, EdgeSet
from grpo.core.update import partition
from grpo.plugins.objectives.clipped_ratio import clipped_loss
from grpo.plugins.samplers.flow import DanceSDE, FlowSDE
from grpo.plugins.trees.topologies import Fan
from grpo.testing import tiny_rollout

PROMPTS = ["two red circles on a gray background", "one blue square on a white background"]


def _rollout(policy, sampler, max_batch, group=3, seed=0, split_logprob="nominal", noise_scale=1.0):
    plan = Fan(group_size=group, noise_scale=noise_scale).plan(sampler.steps)
    ro, cond, _ = tiny_rollout(plan, sampler=sampler, prompts=PROMPTS, seed=seed, split_logprob=split_logprob,
                               policy=policy, max_batch=max_batch)
    return ro, cond


def test_rollout_does_not_depend_on_micro_batch(tiny_policy):
    sampler = DanceSDE(steps=4, eta=0.5)
    a, _ = _rollout(tiny_policy, sampler, max_batch=64)
    b, _ = _rollout(tiny_policy, sampler, max_batch=2)
    for sa, sb in zip(a.states, b.states, strict=True):
        torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-5)
    assert [s.shape[0] for s in a.states] == [2, 6, 6, 6, 6]
    # children of one parent are contiguous and belong to the parent's tree
    assert a.tree[1].tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("sampler", [DanceSDE(steps=4, eta=0.5), FlowSDE(steps=4, noise_level=0.7),
                                     DanceSDE(steps=4, eta=0.5, noise_block=4)], ids=["dance", "flow", "dance-block4"])
@pytest.mark.parametrize("split_logprob,noise_scale", [("nominal", 1.0), ("scaled", 4.0), ("nominal", 4.0)])
def test_on_policy_ratio_is_one_for_every_transition(tiny_policy, sampler, split_logprob, noise_scale):
    ro, cond = _rollout(tiny_policy, sampler, max_batch=5, split_logprob=split_logprob, noise_scale=noise_scale)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    assert len(batch) == ro.plan.edges * 2
    ratios = []
    for part in torch.split(torch.arange(len(batch)), 7):  # a micro-batch size unlike the rollout's
        lp = reevaluate(tiny_policy, sampler, ro, cond, batch.take(part), split_logprob).log_prob
        ratios.append(torch.exp(lp - batch.old_log_prob[part]))
    r = torch.cat(ratios)
    assert torch.all((r - 1).abs() < 1e-5), float((r - 1).abs().max())


def test_block_noise_is_constant_over_tiles_and_unit_variance(tiny_policy):
    white = DanceSDE(steps=3, eta=0.5)
    block = DanceSDE(steps=3, eta=0.5, noise_block=4)
    ro, cond = _rollout(tiny_policy, block, max_batch=8, group=4)
    ref, _ = _rollout(tiny_policy, white, max_batch=8, group=4)
    torch.testing.assert_close(ro.states[0], ref.states[0])  # the initial noise stays white
    draws = []
    for k in range(3):
        x = ro.states[k][ro.parent[k]]
        sigma, sigma_next = ro.sigmas[k].expand(len(x)), ro.sigmas[k + 1].expand(len(x))
        with torch.no_grad():
            v = tiny_policy.velocity(x, sigma, cond.select(ro.tree[k + 1])).float()
        mean, std = block.step(x, v, sigma, sigma_next)
        z = (ro.states[k + 1] - mean) / std.view(-1, 1, 1, 1)
        tiles = z.unflatten(2, (-1, 4)).unflatten(4, (-1, 4))  # (N, C, H/4, 4, W/4, 4)
        assert float((tiles.amax(dim=(3, 5)) - tiles.amin(dim=(3, 5))).max()) < 1e-3
        draws.append(z[:, :, ::4, ::4].flatten())
        assert not torch.allclose(ro.states[k + 1], ref.states[k + 1])
    draws = torch.cat(draws)  # 3 steps × 8 chains × 3 × 8 × 8 tiles, each one standard normal draw
    assert abs(float(draws.mean())) < 0.1 and abs(float(draws.std()) - 1.0) < 0.05


def test_nominal_split_logprob_differs_from_scaled(tiny_policy):
    sampler = DanceSDE(steps=3, eta=0.5)
    nominal, _ = _rollout(tiny_policy, sampler, 8, split_logprob="nominal", noise_scale=4.0)
    scaled, _ = _rollout(tiny_policy, sampler, 8, split_logprob="scaled", noise_scale=4.0)
    torch.testing.assert_close(nominal.states[1], scaled.states[1])  # same samples
    assert not torch.allclose(nominal.log_prob[0], scaled.log_prob[0])  # different densities on the split
    torch.testing.assert_close(nominal.log_prob[1], scaled.log_prob[1])  # ordinary steps agree


def test_clipped_loss_hand_values():
    ratio = torch.tensor([1.5, 0.5, 1.05, 0.95])
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0])
    eps = 0.1
    # max(-A r, -A clip(r)): [-1.1, -0.5, 2.1, 1.9]
    torch.testing.assert_close(clipped_loss(ratio, adv, eps), torch.tensor([-1.1, -0.5, 2.1, 1.9]))


def test_partition_covers_every_edge_once_and_keeps_chains_together(tiny_policy):
    sampler = DanceSDE(steps=4)
    ro, _ = _rollout(tiny_policy, sampler, 8)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    gen = torch.Generator().manual_seed(0)
    for unit in ("edges", "chains"):
        parts = partition(batch.major, batch.chain, 3, unit, gen)
        assert len(parts) == 3
        assert sorted(torch.cat(parts).tolist()) == list(range(len(batch)))
    chains = partition(batch.major, batch.chain, 3, "chains", gen)
    seen = [set(batch.chain[p].tolist()) for p in chains]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])


def test_unscored_leaves_get_their_trees_mean_and_are_marked():
    from types import SimpleNamespace

    from grpo.core.scoring import impute_failed

    nan = float("nan")
    ro = SimpleNamespace(tree=[torch.tensor([0, 0, 0, 1, 1, 1])])  # two trees of three leaves
    scores = [torch.tensor([1.0, nan, 3.0, nan, nan, nan]), torch.tensor([0.5, 0.5, nan, 1.0, 2.0, 3.0])]
    out, failed = impute_failed(ro, scores)
    assert out[0].tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0]  # a tree with no score at all: zeros
    assert out[1].tolist() == [0.5, 0.5, 0.5, 1.0, 2.0, 3.0]
    assert failed.tolist() == [False, True, True, True, True, True]
