import itertools

import pytest

from grpo.core.tree import TreePlan
from grpo.plugins.trees.topologies import Fan


def brute_force(plan: TreePlan) -> tuple[int, int, int]:
    """Count forwards, edges and leaves by expanding the tree node by node."""
    frontier = [()]
    forwards = edges = 0
    for k in range(plan.steps):
        forwards += len(frontier)
        frontier = [node + (c,) for node in frontier for c in range(plan.branch[k])]
        edges += len(frontier)
    return forwards, edges, len(frontier)


def test_dancegrpo_reference_costs():
    plan = Fan(group_size=16).plan(20)
    assert plan.leaves == 16
    assert plan.edges == 320  # trained edges without pruning
    # the 16 chains share their first forward (same initial noise): 1 + 19·16
    assert plan.rollout_forwards == 305


@pytest.mark.parametrize("steps,branch", [(5, {0: 3}), (6, {1: 2, 4: 3}), (20, {0: 2, 3: 2, 6: 2, 9: 2}), (7, {})])
def test_plan_costs_match_brute_force(steps, branch):
    plan = TreePlan(
        tuple(branch.get(k, 1) for k in range(steps)), (1.0,) * steps, (True,) * steps
    )
    assert (plan.rollout_forwards, plan.edges, plan.leaves) == brute_force(plan)


def test_branch_reference_tree_costs():
    # BranchGRPO's reference tree: T = 20, split points 0, 3, 6, 9, b = 2 → 203 forwards, 218 edges
    plan = TreePlan(tuple(2 if k in (0, 3, 6, 9) else 1 for k in range(20)),
                    tuple(4.0 if k in (0, 3, 6, 9) else 1.0 for k in range(20)), (True,) * 20)
    assert plan.rollout_forwards == 203
    assert plan.edges == 218


def test_plan_rejects_inconsistent_lengths():
    with pytest.raises(ValueError):
        TreePlan((1, 2), (1.0,), (True, True))
    with pytest.raises(ValueError):
        TreePlan((0,), (1.0,), (True,))


def test_live_counts():
    plan = Fan(group_size=4).plan(3)
    assert [plan.live(d) for d in range(4)] == [1, 4, 4, 4]
    assert list(itertools.accumulate(plan.branch, lambda a, b: a * b)) == [4, 4, 4]
