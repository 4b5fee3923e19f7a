"""Flow-GRPO: independent chains (a tree of G roots), Flow-GRPO's advantage statistics by hand,
the share of flat groups, and the on-policy ratio of its trained edges."""

import statistics

import pytest
import torch
from support import log_probs, sample

from grpo.core.dist import Group
from grpo.core.edges import EdgeUnits
from grpo.core.plan import skeleton
from grpo.core.pruner import PruneContext
from grpo.core.sampler import sigma_grid
from grpo.core.scoring import zero_std_ratio
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.dancegrpo.advantage import GroupAdvantage
from grpo.plugins.samplers.flow import FlowSDE
from grpo.plugins.trees.topologies import Chains, Fan
from grpo.testing import strategy_parts

PROMPTS = ["two red circles on a gray background", "one blue square on a white background"]


def test_chains_are_a_tree_of_independent_roots():
    plan = Chains(group_size=4).plan(5)
    assert plan.roots == 4 and plan.branch == (1,) * 5 and plan.split_steps == ()
    assert [plan.live(d) for d in range(6)] == [4] * 6
    assert (plan.leaves, plan.rollout_forwards, plan.edges, plan.stochastic_edges) == (4, 20, 20, 20)
    assert Chains(group_size=4, same_latent=True).plan(5) == Fan(group_size=4).plan(5)


def test_rollout_of_chains_draws_one_initial_noise_per_chain(tiny_policy):
    sampler = FlowSDE(steps=3, noise_level=0.7)
    plan = Chains(group_size=3).plan(3)
    cond = tiny_policy.encode_prompts(PROMPTS)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    ro = sample(tiny_policy, sampler, plan, cond, generator=gens, max_batch=4)
    assert [s.shape[0] for s in ro.states] == [6, 6, 6, 6]
    assert ro.tree[0].tolist() == [0, 0, 0, 1, 1, 1] and ro.num_trees == 2
    roots = ro.states[0].flatten(1)
    assert torch.linalg.matrix_rank(roots) == 6  # six different noises
    # the second tree sampled alone (its own generator) is the same tree
    alone = sample(tiny_policy, sampler, plan, cond.select(torch.tensor([1])),
                   generator=[torch.Generator().manual_seed(6)], max_batch=4)
    torch.testing.assert_close(alone.states[-1], ro.states[-1][3:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2 initial noises for 2 trees of 3 root"):
        sample(tiny_policy, sampler, plan, cond, generator=gens, max_batch=4, init_noise=ro.states[0][:2])


def test_flow_grpo_advantage_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    pop = statistics.pstdev(rewards.tolist())  # one std over the batch, population form
    parts = strategy_parts("flow-grpo", group_size=4)
    ro = skeleton(parts["topology"].plan(3), sigma_grid(3), trees=2)
    got = parts["advantage"](ro, rewards)
    want = [(r - 2.5) / (pop + 1e-4) for r in (1, 2, 3, 4)] + [0.0] * 4
    for k in range(3):  # every edge of a chain carries its leaf's advantage
        torch.testing.assert_close(got.values[k], torch.tensor(want))
    own = strategy_parts("flow-grpo", group_size=4, std="group")["advantage"](ro, rewards)
    first = statistics.pstdev([1, 2, 3, 4])
    torch.testing.assert_close(own.values[0][:4], torch.tensor([(r - 2.5) / (first + 1e-4) for r in (1, 2, 3, 4)]))
    torch.testing.assert_close(own.values[0][4:], torch.zeros(4))  # a flat group: 0 / (0 + 1e-4)
    clamped = GroupAdvantage(advantage_clamp=0.2, std="global", std_ddof=0, std_eps=1e-4).leaf_advantages(rewards, 4)
    torch.testing.assert_close(clamped[:4], torch.tensor([-0.2, want[1], want[2], 0.2]))


def test_flow_grpo_statistics_are_fp64_as_its_numpy_tracker():
    """A near-flat group far from zero (as fp32 rewards): the released tracker converts them to float64
    before the mean and the std; the preset's fp64 statistics give its advantages, fp32 ones round
    them visibly."""
    import numpy as np

    rewards = torch.tensor([1000.0, 1000.0001, 1000.0002, 1000.0003, 1000.0005, 1000.0003, 1000.0001, 1000.0])
    r = rewards.numpy().astype(np.float64)
    mean = r.reshape(2, 4).mean(axis=1, keepdims=True)
    want = ((r.reshape(2, 4) - mean) / (np.std(r) + 1e-4)).reshape(-1)
    preset = strategy_parts("flow-grpo", group_size=4)["advantage"]
    got = preset.leaf_advantages(rewards, 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.from_numpy(want), rtol=0, atol=1e-7)
    fp32 = GroupAdvantage(std="global", std_ddof=0, std_eps=1e-4).leaf_advantages(rewards, 4)
    assert float((fp32.double() - torch.from_numpy(want)).abs().max()) > 1e-6


def test_global_std_comes_from_every_rank():
    """With a gather that adds another rank's leaves, the std is the std of both ranks' leaves."""
    mine, theirs = torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 9.0, 3.0, 5.0])
    estimator = GroupAdvantage(std="global", std_ddof=0, std_eps=1e-4)
    assert estimator.uses_all_ranks and not GroupAdvantage().uses_all_ranks
    got = estimator.leaf_advantages(mine, 2, gather=lambda t: torch.cat([t, theirs]))
    pop = statistics.pstdev([0, 1, 0, 1, 0, 9, 3, 5])
    torch.testing.assert_close(got, torch.tensor([-0.5, 0.5, -0.5, 0.5]) / (pop + 1e-4))


def test_zero_std_ratio_counts_flat_groups():
    ro = skeleton(Chains(group_size=3).plan(2), sigma_grid(2), trees=4)
    total = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.7])
    assert zero_std_ratio(ro, total, Group()) == 0.5


def test_flow_grpo_trains_the_released_share_of_each_chain():
    parts = strategy_parts("flow-grpo", group_size=3)
    plan = parts["topology"].plan(10)
    ro = skeleton(plan, sigma_grid(10), trees=2)
    adv = Advantages([torch.zeros(n.shape[0]) for n in ro.states[1:]])
    edges = parts["pruner"][0](ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 1, torch.Generator().manual_seed(0)))
    per_chain = torch.stack(edges.masks, dim=1).sum(dim=1)
    assert per_chain.tolist() == [9] * 6  # ⌊0.99 · 10⌋ of each chain's 10 steps: the first nine
    assert all(bool(m.all()) for m in edges.masks[:9]) and not edges.masks[9].any()
    objective = parts["objective"]
    assert (objective.clip_range, objective.kl_beta, objective.kl_form) == (1e-4, 0.04, "flow-grpo")


def test_on_policy_ratio_of_flow_grpo_edges(tiny_policy):
    sampler = FlowSDE(steps=4, noise_level=0.7)
    parts = strategy_parts("flow-grpo", group_size=3)
    cond = tiny_policy.encode_prompts(PROMPTS)
    ro = sample(tiny_policy, sampler, parts["topology"].plan(4), cond, generator=torch.Generator().manual_seed(2),
                max_batch=5)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    assert len(batch) == 2 * 3 * 4
    lp = log_probs(tiny_policy, sampler, ro, cond, batch, parts["objective"].split_logprob)
    assert torch.all((torch.exp(lp - batch.old_log_prob) - 1).abs() < 1e-5)
