"""MixGRPO and Flow-GRPO-Fast: the window schedules against the sequences MixGRPO's released state
machine produces (worked out by hand from its rules), the trees they give, and on-policy ratios."""

import itertools

import pytest
import torch
from support import log_probs, sample

from grpo.core.edges import EdgeUnits
from grpo.core.errors import UserError
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.dancegrpo.advantage import GroupAdvantage
from grpo.plugins.samplers.flow import FlowSDE
from grpo.plugins.trees.window import SDEWindow
from grpo.testing import strategy_parts


def runs(window: SDEWindow, steps: int, iterations: int) -> list[tuple[int, int]]:
    """(start, iterations at that start), in order."""
    starts = [window.start(steps, i) for i in range(iterations)]
    return [(s, len(list(g))) for s, g in itertools.groupby(starts)]


def test_progressive_moves_one_step_every_25_iterations_as_released():
    # MixGRPO's scripts: 25 steps, a window of 4, one step every 25 iterations, over 300 iterations
    assert runs(SDEWindow(), 25, 300) == [(s, 25) for s in range(12)]
    assert list(SDEWindow().window(25, 299)) == [11, 12, 13, 14]


def test_progressive_without_overlap_shortens_the_last_window_and_rolls_back():
    w = SDEWindow(window_stride=4)  # --prog_overlap off: the window moves by its own size
    assert runs(w, 25, 175) == [(0, 25), (4, 25), (8, 25), (12, 25), (16, 25), (20, 25), (0, 25)]
    assert list(w.window(25, 125)) == [20, 21, 22]  # steps 23 and 24 are never in a window
    stay = SDEWindow(window_stride=4, roll_back=False)
    assert runs(stay, 25, 200)[-1] == (20, 75)


def test_decay_and_exp_decay_dwell_times():
    # decay from 10 to 1 iterations: ⌊10·(1 − s/23) + s/23⌋, at least 1
    assert [n for _, n in runs(SDEWindow(schedule="decay"), 25, 120)] == \
        [10, 9, 9, 8, 8, 8, 7, 7, 6, 6, 6, 5, 5, 4, 4, 4, 3, 3, 2, 2, 2, 1, 1]
    assert runs(SDEWindow(schedule="decay"), 25, 121)[-1] == (0, 1)  # then back to the first window
    # exp-decay: 25 iterations up to start 13, then ⌈25·exp(−0.1·(s − 13))⌉
    exp = runs(SDEWindow(schedule="exp-decay"), 25, 14 * 25 + 146)
    assert exp[:14] == [(s, 25) for s in range(14)]
    assert [n for _, n in exp[14:]] == [23, 21, 19, 17, 16, 14, 13, 12, 11]


def test_random_windows_are_uniform_reproducible_and_inside_the_range():
    w = SDEWindow(schedule="random", window_size=3, window_range=[0, 5])
    starts = [w.start(10, i) for i in range(600)]
    assert set(starts) == {0, 1, 2} and starts == [w.start(10, i) for i in range(600)]
    counts = torch.bincount(torch.tensor(starts)).float()
    assert float(counts.min()) > 160  # 200 expected for each
    assert [SDEWindow(schedule="random", window_seed=1).start(25, i) for i in range(20)] != starts[:20]
    with pytest.raises(UserError, match="does not fit"):
        SDEWindow(schedule="random", window_size=6, window_range=[0, 5]).plan(10)


def test_the_tree_splits_at_the_window_and_shares_its_prefix():
    plan = SDEWindow(group_size=3, window_size=2, schedule="fixed", window_range=[2, -2]).plan(6)
    assert plan.branch == (1, 1, 3, 1, 1, 1)
    assert plan.stochastic == (False, False, True, True, False, False)
    # steps 0-2 once (the split's own forward is shared too), then 3 chains for steps 3-5
    assert plan.rollout_forwards == 3 + 3 * 3 and plan.stochastic_edges == 6
    independent = SDEWindow(group_size=3, window_size=2, schedule="fixed", same_latent=False).plan(6)
    assert independent.roots == 3 and independent.rollout_forwards == 18 and independent.stochastic_edges == 6


def test_mixgrpo_and_fast_strategies():
    mix = strategy_parts("mixgrpo")
    plan = mix["topology"].plan(25, iteration=60)  # the third window: steps 2-5
    assert [k for k in range(25) if plan.stochastic[k]] == [2, 3, 4, 5] and plan.split_steps == (2,)
    assert (mix["objective"].clip_range, mix["pruner"]) == (1e-4, [])
    assert plan.rollout_forwards == 3 + 12 * 22  # 300 in the released code, which repeats the prefix
    fast = strategy_parts("flow-grpo-fast", group_size=4, window_size=2)
    assert fast["pruner"] == [] and fast["topology"].plan(10).roots == 4  # independent chains, as released
    assert (fast["objective"].clip_range, fast["objective"].kl_beta) == (1e-5, 0.0)
    assert fast["topology"].window(10, 0) == fast["topology"].window(10, 0)  # drawn from the iteration alone


def test_trimmed_statistics_leave_out_the_lowest_rewards():
    r = torch.tensor([0.0, 4.0, 5.0, 6.0])
    got = GroupAdvantage(trim_lowest=0.25).leaf_advantages(r, 4)
    torch.testing.assert_close(got, torch.tensor([-5.0, -1.0, 0.0, 1.0]))  # mean 5, std 1 of 4, 5, 6; clamped


@pytest.mark.parametrize("strategy,table", [("mixgrpo", {"group_size": 3, "window_size": 2, "iters_per_window": 1}),
                                            ("flow-grpo-fast", {"group_size": 3, "window_size": 2,
                                                                "window_range": [0, 4]})],
                         ids=["mixgrpo", "flow-grpo-fast"])
def test_on_policy_ratio_of_window_edges(tiny_policy, strategy, table):
    sampler = FlowSDE(steps=6, noise_level=0.7)
    parts = strategy_parts(strategy, **table)
    cond = tiny_policy.encode_prompts(["two red circles on a gray background", "one blue square on a white background"])
    plan = parts["topology"].plan(6, iteration=2)
    ro = sample(tiny_policy, sampler, plan, cond, generator=torch.Generator().manual_seed(3), max_batch=4)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    assert len(batch) == 2 * 3 * 2  # the window's two steps of every chain
    lp = log_probs(tiny_policy, sampler, ro, cond, batch, parts["objective"].split_logprob)
    assert torch.all((torch.exp(lp - batch.old_log_prob) - 1).abs() < 1e-5)
