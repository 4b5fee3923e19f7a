import math
from pathlib import Path

import torch

from grpo.core.advantage import normalise_groups
from grpo.core.plan import skeleton
from grpo.core.pruner import PruneContext
from grpo.core.sampler import sigma_grid
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.dancegrpo.advantage import GroupAdvantage
from grpo.plugins.dancegrpo.pruners import TimestepFraction
from grpo.plugins.trees.topologies import Fan
from grpo.testing import strategy_parts


def _forest(group, steps, trees):
    return skeleton(Fan(group_size=group).plan(steps), sigma_grid(steps), trees)


def test_group_advantage_hand_computed():
    ro = _forest(group=4, steps=3, trees=2)
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    adv = GroupAdvantage(advantage_clamp=5.0)(ro, rewards)
    s = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # unbiased std of 1,2,3,4 = 1.29099
    first = [(-1.5) / s, -0.5 / s, 0.5 / s, 1.5 / s]
    expected = torch.tensor(first + [0.0, 0.0, 0.0, 0.0])  # a flat group has no signal
    for k in range(3):  # every edge of a chain carries its leaf's advantage
        torch.testing.assert_close(adv.values[k], expected, atol=1e-6, rtol=1e-6)


def test_group_advantage_clamps():
    values = torch.tensor([0.0] * 99 + [1.0])
    adv = normalise_groups(values, 100, clamp=5.0)
    assert float(adv.max()) == 5.0  # (1 - 0.01) / 0.1 = 9.9 → clamped


def test_timestep_fraction_trains_ceil_f_t_steps_per_chain():
    steps, group = 10, 4
    ro = _forest(group=group, steps=steps, trees=3)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    gen = torch.Generator().manual_seed(0)
    edges = TimestepFraction(timestep_fraction=0.6, ignore_last=True)(ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 10, gen))
    per_chain = torch.stack(edges.masks, dim=1)  # (leaves, steps): chains are 1:1 with step-k nodes
    assert per_chain.sum(dim=1).tolist() == [6] * (group * 3)
    assert not per_chain[:, -1].any()  # ignore_last
    assert edges.count() == 6 * group * 3


def test_strategy_parts_follow_options():
    parts = strategy_parts("dancegrpo", group_size=16, timestep_fraction=1.0, clip_range=2e-4)
    plan = parts["topology"].plan(20)
    assert (plan.leaves, plan.edges, plan.rollout_forwards) == (16, 320, 305)
    assert parts["objective"].clip_range == 2e-4 and parts["pruner"][0].timestep_fraction == 1.0
    ro = _forest(group=16, steps=20, trees=1)  # f = 1 trains every step
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    ctx = PruneContext(0, 1, torch.Generator().manual_seed(0))
    assert parts["pruner"][0](ro, adv, EdgeSet.all_stochastic(ro), ctx).count() == 320


def test_timestep_fraction_window():
    ro = _forest(group=2, steps=16, trees=1)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    gen = torch.Generator().manual_seed(3)
    edges = TimestepFraction(timestep_fraction=0.8, step_window=[0, 10])(ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 10, gen))
    per_chain = torch.stack(edges.masks, dim=1)
    assert per_chain.sum(dim=1).tolist() == [8, 8]
    assert not per_chain[:, 10:].any()


def test_released_step_count():
    """DanceGRPO's released trainer drops the last step and trains int(f·(T − 1)) of the others:
    9 of steps 0-14 at T = 16, f = 0.6 (this project's default, ⌈f·T⌉, trains 10)."""
    steps, group = 16, 3
    ro = skeleton(Fan(group_size=group).plan(steps), sigma_grid(steps))
    adv = Advantages([torch.zeros(group) for _ in range(steps)])
    released = TimestepFraction(timestep_fraction=0.6, ignore_last=True, step_rounding="down")
    edges = released(ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 10, torch.Generator().manual_seed(0)))
    per_chain = torch.stack(edges.masks, dim=1)  # (chains, steps)
    assert per_chain.sum(dim=1).tolist() == [9] * group and not per_chain[:, 15].any()
    ours = TimestepFraction(timestep_fraction=0.6)(ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 10, torch.Generator()))
    assert torch.stack(ours.masks, dim=1).sum(dim=1).tolist() == [10] * group


def test_best_of_n_keeps_the_best_and_worst_chains_by_hand():
    """Six chains with advantages 3, −1, 0.5, −2, 1, 0; keep 4: the chains of 3 and 1 (best) and of
    −2 and −1 (worst) are trained at every step, the others at none; a tree of ≤ keep leaves keeps all."""
    from grpo.plugins.dancegrpo.pruners import BestOfN

    ro = skeleton(Fan(group_size=6).plan(3), sigma_grid(3))
    leaf = torch.tensor([3.0, -1.0, 0.5, -2.0, 1.0, 0.0])
    adv = Advantages([leaf.clone() for _ in range(3)])
    out = BestOfN(keep=4)(ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 1, torch.Generator()))
    for mask in out.masks:
        assert mask.tolist() == [True, True, False, True, True, False]
    everything = BestOfN(keep=6)(ro, adv, EdgeSet.all_stochastic(ro), PruneContext(0, 1, torch.Generator()))
    assert all(m.all() for m in everything.masks)


def test_best_of_n_in_a_recipe_slot(tmp_path):
    from grpo.plugins.dancegrpo.pruners import BestOfN
    from grpo.testing import check_pruner, run_tiny_recipe

    check_pruner(BestOfN(keep=2))
    from grpo.core.recipe import load_toml

    recipe = load_toml(Path(__file__).resolve().parents[2] / "recipes" / "shapes_dance.toml")
    recipe["strategy"] = {"use": "dancegrpo", "group_size": 6, "pruner": [{"use": "best-of-n", "keep": 2}]}
    records = run_tiny_recipe(recipe, tmp_path / "r")
    train = next(r for r in records if r["kind"] == "train")
    assert train["cost/trained_edges"] == 2 * 2 * 4  # two trees, two chains each, four steps
