"""BranchGRPO: tree shapes against brute force, fused depth-wise advantages by hand, pruners, Mix."""

import math
from pathlib import Path

import pytest
import torch
from support import log_probs, sample

from grpo.core.edges import EdgeUnits
from grpo.core.errors import UserError
from grpo.core.plan import skeleton
from grpo.core.pruner import PruneContext
from grpo.core.sampler import sigma_grid
from grpo.core.tree import Advantages, EdgeSet, TreePlan
from grpo.plugins.branchgrpo.advantage import DepthWiseAdvantage
from grpo.plugins.branchgrpo.pruners import DepthPruner, LastStepPruner, WidthPruner
from grpo.plugins.branchgrpo.topology import Branching, even_split_points
from grpo.plugins.dancegrpo.advantage import GroupAdvantage
from grpo.plugins.samplers.flow import DanceSDE
from grpo.plugins.trees.topologies import Fan
from grpo.testing import strategy_parts


def brute_force(steps, splits, b):
    """Expand the tree node by node: (rollout forwards, edges, leaves)."""
    frontier, forwards, edges = [()], 0, 0
    for k in range(steps):
        forwards += len(frontier)
        frontier = [n + (c,) for n in frontier for c in range(b if k in splits else 1)]
        edges += len(frontier)
    return forwards, edges, len(frontier)


@pytest.mark.parametrize("steps,splits,b", [(20, [0, 3, 6, 9], 2), (20, [0, 3, 6, 9], 3), (10, [1, 2, 7], 2),
                                            (12, [0, 10], 4), (16, [5], 2)])
def test_branching_costs_match_brute_force(steps, splits, b):
    plan = Branching(split_points=splits, branch_factor=b).plan(steps)
    assert (plan.rollout_forwards, plan.edges, plan.leaves) == brute_force(steps, set(splits), b)


def test_reference_tree_costs_and_even_split_points():
    plan = strategy_parts("branchgrpo")["topology"].plan(20)
    assert (plan.rollout_forwards, plan.edges, plan.leaves) == (203, 218, 16)
    assert even_split_points(20, 4) == [0, 3, 6, 9]
    assert Branching(num_splits=4).plan(20).split_steps == (0, 3, 6, 9)
    with pytest.raises(UserError):
        Branching(split_points=[3, 3]).plan(20)
    with pytest.raises(UserError):
        Branching(split_points=[0, 20]).plan(20)


def _tree(plan, rewards_log_probs=None):
    ro = skeleton(plan, sigma_grid(plan.steps))
    if rewards_log_probs is not None:
        ro.log_prob = rewards_log_probs
    return ro


def _norm(values):
    v = torch.tensor(values, dtype=torch.float64)
    if v.numel() < 2 or v.std() < 1e-6:
        return [0.0] * v.numel()
    return ((v - v.mean()) / (v.std() + 1e-8)).tolist()


def test_depth_wise_advantage_mean_fusion_by_hand():
    # 3 steps, split at 0 and 1 with b = 2: depth 1 has 2 nodes, depth 2 and 3 have 4
    plan = Branching(split_points=[0, 1], branch_factor=2).plan(3)
    ro = _tree(plan)
    r = torch.tensor([1.0, 3.0, 2.0, 6.0])
    adv = DepthWiseAdvantage(fusion="mean")(ro, r)
    # depth 1: node rewards mean(1, 3) = 2 and mean(2, 6) = 4
    assert adv.values[0].tolist() == pytest.approx(_norm([2.0, 4.0]))
    assert adv.values[1].tolist() == pytest.approx(_norm([1.0, 3.0, 2.0, 6.0]))
    assert adv.values[2].tolist() == pytest.approx(_norm([1.0, 3.0, 2.0, 6.0]))


def test_depth_wise_advantage_path_prob_fusion_by_hand():
    plan = Branching(split_points=[0, 1], branch_factor=2).plan(3)
    lp = [torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0, 0.0, math.log(4.0), 0.0]), torch.zeros(4)]
    ro = _tree(plan, lp)
    r = torch.tensor([1.0, 3.0, 2.0, 6.0])
    adv = DepthWiseAdvantage(fusion="path-prob", fusion_alpha=1.0)(ro, r)
    # depth 1: softmax over each node's two children: (1+3)/2 = 2 and (4·2 + 6)/5 = 2.8
    assert adv.values[0].tolist() == pytest.approx(_norm([2.0, 2.8]))
    assert adv.values[1].tolist() == pytest.approx(_norm([1.0, 3.0, 2.0, 6.0]))
    # the root's fused reward, weights 1/4 and 3/4
    from grpo.plugins.branchgrpo.advantage import fuse_rewards

    assert float(fuse_rewards(ro, r, "path-prob", 1.0)[0][0]) == pytest.approx(0.25 * 2.0 + 0.75 * 2.8)


def test_depth_wise_advantage_is_per_tree_and_zero_for_single_or_flat_depths():
    plan = Branching(split_points=[1], branch_factor=2).plan(3)
    two_trees = skeleton(plan, sigma_grid(plan.steps), trees=2)
    adv = DepthWiseAdvantage()(two_trees, torch.tensor([1.0, 2.0, 5.0, 5.0]))
    assert adv.values[0].tolist() == [0.0, 0.0]  # depth 1 has one node per tree
    assert adv.values[1].tolist() == pytest.approx(_norm([1.0, 2.0]) + [0.0, 0.0])


def test_pruners_only_narrow_edges():
    plan = strategy_parts("branchgrpo")["topology"].plan(20)
    ro = _tree(plan)
    r = torch.arange(16, dtype=torch.float32)
    adv = DepthWiseAdvantage()(ro, r)
    before_states = [s.clone() for s in ro.states]
    before_adv = [a.clone() for a in adv.values]
    full = EdgeSet.all_stochastic(ro)
    ctx = PruneContext(0, 100, torch.Generator().manual_seed(0))
    for pruner in (DepthPruner(pruned_depths=[15, 16, 17, 18]), WidthPruner(width_ratio=0.5), LastStepPruner()):
        out = pruner(ro, adv, full, ctx)
        assert all(bool((o & ~f).any()) is False for o, f in zip(out.masks, full.masks, strict=True))
        assert out.count() < full.count()
    assert all(torch.equal(a, b) for a, b in zip(before_states, ro.states, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_adv, adv.values, strict=True))


def test_depth_pruner_counts_and_slide():
    plan = strategy_parts("branchgrpo")["topology"].plan(20)
    ro = _tree(plan)
    adv = DepthWiseAdvantage()(ro, torch.arange(16.0))
    full = EdgeSet.all_stochastic(ro)
    pruner = DepthPruner(pruned_depths=[15, 16, 17, 18], depth_slide_every=10)
    g = torch.Generator()
    out = pruner(ro, adv, full, PruneContext(0, 100, g))
    assert out.count() == 218 - 4 * 16  # four depths of 16 nodes each
    assert pruner.active_depths(ro, 25) == {13, 14, 15, 16}
    assert pruner.active_depths(ro, 10_000) == {9, 10, 11, 12}  # stops at the last split point (9)
    late = DepthPruner(pruned_depths=[15], pruning_fraction=0.5)(ro, adv, full, PruneContext(51, 100, g))
    assert late.count() == 218  # pruning is over after half of training


def test_width_pruner_keeps_best_and_worst_chains_per_tree_or_pooled():
    plan = Branching(split_points=[0, 1], branch_factor=2).plan(4)
    ro = _tree(plan)
    adv = Advantages([torch.zeros(2), torch.zeros(4), torch.zeros(4), torch.tensor([0.5, -2.0, 1.5, 0.1])])
    full = EdgeSet.all_stochastic(ro)
    out = WidthPruner(width_ratio=0.5)(ro, adv, full, PruneContext(0, 1, torch.Generator()))
    assert out.masks[0].all() and out.masks[1].all()  # up to and including the last split: kept
    assert out.masks[2].tolist() == [False, True, True, False]  # best (1.5) and worst (-2.0) chains
    assert out.masks[3].tolist() == [False, True, True, False]


def test_dancegrpo_equals_the_fan_tree_of_branchgrpo(tiny_policy):
    """DanceGRPO = the tree with split points {0}, b = G, λ = 1: same samples, advantages and loss."""
    sampler = DanceSDE(steps=4, eta=0.5)
    dance = strategy_parts("dancegrpo", group_size=4, timestep_fraction=1.0)
    tree = strategy_parts("branchgrpo", split_points=[0], branch_factor=4, split_noise_scale=1.0)
    cond = tiny_policy.encode_prompts(["two red circles on a gray background", "one blue square on a white background"])
    outs = []
    for parts in (dance, tree):
        mode = parts["objective"].split_logprob
        ro = sample(tiny_policy, sampler, parts["topology"].plan(4), cond,
                    generator=torch.Generator().manual_seed(0), max_batch=8, split_logprob=mode)
        rewards = ro.final.flatten(1).mean(1)  # any deterministic function of the samples
        adv = parts["advantage"](ro, rewards)
        batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
        lp = log_probs(tiny_policy, sampler, ro, cond, batch, mode)
        loss = -(batch.advantage * torch.exp(lp - batch.old_log_prob)).mean()
        outs.append((ro, adv, loss))
    (ra, aa, la), (rb, ab, lb) = outs
    for x, y in zip(ra.states, rb.states, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(aa.values, ab.values, strict=True):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(GroupAdvantage()(ra, ra.final.flatten(1).mean(1)).values[0], aa.values[0])


@pytest.mark.parametrize("mode", ["nominal", "scaled"])
def test_on_policy_ratio_on_split_edges(tiny_policy, mode):
    sampler = DanceSDE(steps=5, eta=0.5)
    parts = strategy_parts("branchgrpo", split_points=[0, 2], split_logprob=mode)
    assert parts["objective"].keep.split_logprob == mode
    cond = tiny_policy.encode_prompts(["three green triangles on a black background"])
    ro = sample(tiny_policy, sampler, parts["topology"].plan(5), cond, generator=torch.Generator().manual_seed(1),
                max_batch=3, split_logprob=mode)
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    lp = log_probs(tiny_policy, sampler, ro, cond, batch, mode)
    assert torch.all((torch.exp(lp - batch.old_log_prob) - 1).abs() < 1e-5)


def test_mix_trains_only_sde_edges_and_window_slides():
    mix = strategy_parts("branchgrpo-mix", window_size=4, window_slide_every=10, window_stride=2)
    plan = mix["topology"].plan(20, iteration=0)
    assert [k for k in range(20) if plan.stochastic[k]] == [0, 1, 2, 3, 6, 9]
    later = mix["topology"].plan(20, iteration=35)  # three moves of 2 steps: window 6..9
    assert [k for k in range(20) if later.stochastic[k]] == [0, 3, 6, 7, 8, 9]
    end = mix["topology"].plan(20, iteration=10_000)  # the window stops at the last steps
    assert [k for k in range(20) if end.stochastic[k]] == [0, 3, 6, 9, 16, 17, 18, 19]
    ro = _tree(plan)
    edges = EdgeSet.all_stochastic(ro)
    for k in range(20):
        assert bool(edges.masks[k].any()) == plan.stochastic[k]
    # ODE steps keep the rollout cost but not the update cost
    assert plan.rollout_forwards == 203 and edges.count() == sum(plan.live(k + 1) for k in (0, 1, 2, 3, 6, 9))


def test_mix_ode_steps_have_no_log_probability(tiny_policy):
    sampler = DanceSDE(steps=6, eta=0.5)
    plan = TreePlan((2, 1, 1, 1, 1, 1), (4.0, 1, 1, 1, 1, 1), (True, True, False, False, False, False))
    cond = tiny_policy.encode_prompts(["one red circle on a white background"])
    ro = sample(tiny_policy, sampler, plan, cond, generator=torch.Generator().manual_seed(0), max_batch=4)
    assert torch.isnan(ro.log_prob[3]).all() and torch.isfinite(ro.log_prob[0]).all()
    assert EdgeSet.all_stochastic(ro).per_step() == [2, 2, 0, 0, 0, 0]
    assert Fan(group_size=2).plan(6).stochastic == (True,) * 6


def test_strategy_sampler_defaults_give_the_reference_plan(tmp_path):
    from grpo.cli.common import load_recipe
    from grpo.core.plan import cost

    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nuse = "shapes"\n[strategy]\nuse = "branchgrpo"\n[[reward]]\nuse = "shapes-faithfulness"\n'
                      '[prompts]\nuse = "shapes"\n')
    r, _ = load_recipe(recipe, env=False)
    assert (r.sampler.entry.name, r.sampler.options) == ("dance-sde", {"steps": 20, "shift": 3.0, "eta": 0.3, "noise_block": 1})
    report = cost(r)
    assert (report.plan.rollout_forwards, report.trained_edges) == (203, 218)
    r, _ = load_recipe(recipe, ["sampler.steps=16"], env=False)
    assert r.sampler.options == {"steps": 16, "shift": 3.0, "eta": 0.3, "noise_block": 1}  # the recipe's key wins
    r, _ = load_recipe(recipe, ["sampler.use=flow-sde"], env=False)
    assert r.sampler.options == {"steps": 16, "shift": 1.0, "noise_level": 0.7, "noise_block": 1,
                                 "first_step": "flow-grpo"}  # another sampler: its own


@pytest.mark.parametrize("fraction,active", [(0.5, 150), (0.0, 0), (1.0, 300), (0.25, 75)])
def test_pruning_fraction_prunes_that_share_of_the_iterations(fraction, active):
    """f of 300 iterations (0-based) prune for exactly ⌊300·f⌋ of them (f = 0.5 pruned 151 and
    f = 0 still pruned iteration 0)."""
    ro = skeleton(Branching(split_points=[0, 2]).plan(4), sigma_grid(4))
    adv = Advantages([torch.zeros(ro.states[k + 1].shape[0]) for k in range(4)])
    full = EdgeSet.all_stochastic(ro)
    pruner = DepthPruner(pruned_depths=[4], pruning_fraction=fraction)
    pruned = [pruner(ro, adv, full, PruneContext(i, 300, torch.Generator())).count() < full.count() for i in range(300)]
    assert sum(pruned) == active and all(pruned[:active])


def test_a_split_noise_scale_on_a_step_that_does_not_split_is_refused():
    """The rollout applied λ there and the update did not (on-policy ratios of 0.19 and 0.32)."""
    with pytest.raises(ValueError, match="step 1 does not split"):
        TreePlan((2, 1, 1), (2.0, 3.0, 1.0), (True, True, True))


def test_a_split_at_the_last_step_is_refused(tmp_path):
    """Its children all decode from the same x̂0: b identical leaves."""
    with pytest.raises(UserError, match="last step") as e:
        Branching(split_points=[0, 3]).plan(4)
    assert e.value.where == "split_points"  # the option's name: a recipe reports it where it was set


def test_pruned_depths_beyond_the_tree_are_refused(tmp_path):
    from typer.testing import CliRunner

    from grpo.cli.main import app

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "shapes_branch.toml")
    result = CliRunner().invoke(app, ["validate", recipe, "--set", "strategy.pruned_depths=[16, 17]"])
    assert result.exit_code == 2 and "strategy.pruned_depths" in result.output and "17" in result.output, result.output
    assert "16 steps" in result.output


def test_pooled_width_pruning_by_hand():
    """Two trees of 4 leaves; ratio 0.5 keeps 4 chains after the last split. Pooled: the 2 best and 2
    worst of all 8 leaves (all of tree 1's best are better than tree 2's); per tree: the best and the
    worst of each."""
    ro = skeleton(Branching(split_points=[0], branch_factor=4).plan(2), sigma_grid(2), trees=2)
    leaf = torch.tensor([0.9, 0.8, 0.7, 0.6, -0.1, -0.2, -0.3, -0.4])
    adv = Advantages([leaf.clone(), leaf.clone()])
    full = EdgeSet.all_stochastic(ro)
    ctx = PruneContext(0, 1, torch.Generator())
    pooled = WidthPruner(width_ratio=0.5, width_pooled=True)(ro, adv, full, ctx)
    assert pooled.masks[0].all()  # the split edges are always trained
    assert pooled.masks[1].tolist() == [True, True, False, False, False, False, True, True]
    per_tree = WidthPruner(width_ratio=0.5)(ro, adv, full, ctx)
    assert per_tree.masks[1].tolist() == [True, False, False, True, True, False, False, True]


@pytest.mark.parametrize("mode", ["nominal", "scaled"])
def test_split_log_probabilities_in_closed_form(tiny_policy, mode):
    """A split child is x' = μ + λτε. Nominal scores it under N(μ, τ²): mean of −(λε)²/2 − log τ −
    log √(2π); scaled under N(μ, (λτ)²): mean of −ε²/2 − log λτ − log √(2π)."""
    lam, sampler = 3.0, DanceSDE(steps=3, eta=0.5)
    plan = Branching(split_points=[0], branch_factor=2, split_noise_scale=lam).plan(3)
    cond = tiny_policy.encode_prompts(["one red circle on a white background"])
    ro = sample(tiny_policy, sampler, plan, cond, generator=torch.Generator().manual_seed(4), max_batch=4,
                split_logprob=mode)
    x, sigma, sigma_next = ro.states[0], ro.sigmas[0].expand(1), ro.sigmas[1].expand(1)
    with torch.no_grad():
        mean, tau = sampler.step(x, tiny_policy.velocity(x, sigma, cond).float(), sigma, sigma_next)
    eps = (ro.states[1] - mean) / (lam * tau)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    if mode == "nominal":
        want = (-0.5 * (lam * eps) ** 2).flatten(1).mean(1) - math.log(float(tau)) - half_log_2pi
    else:
        want = (-0.5 * eps**2).flatten(1).mean(1) - math.log(lam * float(tau)) - half_log_2pi
    torch.testing.assert_close(ro.log_prob[0], want.float(), rtol=1e-5, atol=1e-5)
    assert abs(float(eps.std()) - 1.0) < 0.05  # the children's noise is standard normal
