"""BranchGRPO's pruners: they narrow the trained edges, never the rollout or the advantages."""

from __future__ import annotations

from typing import Annotated

import torch

from grpo.core.errors import UserError
from grpo.core.pruner import PruneContext, best_and_worst
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout, TreePlan

FractionOption = Annotated[float, Range(ge=0, le=1), Doc("prune during this share of training")]


def _active(ctx: PruneContext, fraction: float) -> bool:
    """Pruning runs during the first ⌊fraction · iterations⌋ iterations (``pruning_step_ratio``;
    iterations count from 0)."""
    return ctx.iteration < int(ctx.total_iterations * fraction)


class DepthPruner:
    """Drop the edges whose child depth is in `pruned_depths` (none when it is empty).

    With `depth_slide_every` > 0 the set moves one depth shallower every `depth_slide_every`
    iterations, until its shallowest depth reaches `depth_stop` (default, -1: the last split point).
    """

    def __init__(
        self,
        *,
        pruned_depths: Annotated[list[int], Range(ge=1), Doc(
            "child depths whose edges are not trained (a node made by step k has depth k + 1; empty = none)")] = [],  # noqa: B006
        depth_slide_every: Annotated[int, Range(ge=0), Doc("iterations between slides (0 = fixed)")] = 0,
        depth_stop: Annotated[int, Range(ge=-1), Doc("shallowest depth of a sliding set (-1 = last split point)")] = -1,
        pruning_fraction: FractionOption = 1.0,
    ) -> None:
        self.pruned_depths = sorted(pruned_depths)
        self.depth_slide_every, self.depth_stop, self.pruning_fraction = depth_slide_every, depth_stop, pruning_fraction

    def active_depths(self, rollout: Rollout, iteration: int) -> set[int]:
        if not self.pruned_depths:
            return set()
        shift = iteration // self.depth_slide_every if self.depth_slide_every else 0
        splits = rollout.plan.split_steps
        stop = self.depth_stop if self.depth_stop >= 0 else (splits[-1] if splits else 0)
        shift = min(shift, max(0, self.pruned_depths[0] - stop))
        return {d - shift for d in self.pruned_depths}

    def check_plan(self, plan: TreePlan) -> None:
        """Every pruned depth must exist in the tree (a node created by step k has depth k + 1)."""
        beyond = [d for d in self.pruned_depths if d > plan.steps]
        if beyond:
            raise UserError(f"depths {beyond} are beyond a tree of {plan.steps} steps (depths 1-{plan.steps})",
                            where="pruned_depths", hint=f"prune depths from 1 to {plan.steps}, or use more sampler.steps")

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        if not _active(ctx, self.pruning_fraction):
            return edges
        drop = self.active_depths(rollout, ctx.iteration)
        return EdgeSet([m & (k + 1 not in drop) for k, m in enumerate(edges.masks)])


class WidthPruner:
    """After the last split, train only whole chains of the best and worst leaves by advantage:
    ``keep = max(2, ⌊width_ratio·L⌋)`` of the L leaves, half from the top and the rest from the bottom.

    Leaves are ranked within each tree (default) or pooled over this rank's trees (`width_pooled`);
    with `width_pooled_across_ranks` the pool is every tree of the iteration on every rank (one
    gather per iteration).
    Split edges and every edge up to the last split are always kept.
    """

    def __init__(
        self,
        *,
        width_ratio: Annotated[float, Range(gt=0, le=1), Doc(
            "share of chains kept after the last split (1.0 keeps every chain)")] = 0.5,
        width_pooled: Annotated[bool, Doc("rank leaves over all of this rank's trees, not per tree")] = False,
        pruning_fraction: FractionOption = 1.0,
        width_pooled_across_ranks: Annotated[bool, Doc("with width_pooled: over every rank's trees")] = False,
    ) -> None:
        self.width_ratio, self.width_pooled, self.pruning_fraction = width_ratio, width_pooled, pruning_fraction
        self.width_pooled_across_ranks = width_pooled_across_ranks

    def kept_leaves(self, rollout: Rollout, leaf_advantage: torch.Tensor) -> torch.Tensor:
        """Boolean (N_T,) of leaves whose chains are trained."""
        group = leaf_advantage.numel() if self.width_pooled else rollout.plan.leaves
        return best_and_worst(leaf_advantage, group, lambda n: min(max(2, int(n * self.width_ratio)), n))

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        splits = rollout.plan.split_steps
        if not splits or not _active(ctx, self.pruning_fraction):
            return edges
        last = splits[-1]
        leaf_adv = advantages.values[-1]
        if self.width_pooled and self.width_pooled_across_ranks:
            everyone = ctx.gather(leaf_adv)
            n = leaf_adv.numel()
            kept = self.kept_leaves(rollout, everyone)[ctx.rank * n : (ctx.rank + 1) * n]
        else:
            kept = self.kept_leaves(rollout, leaf_adv)
        masks = []
        for k, m in enumerate(edges.masks):
            if k <= last:
                masks.append(m)
            else:  # after the last split every node has exactly one leaf below it
                masks.append(m & kept.reshape(-1, rollout.leaves_per_node(k + 1)).any(dim=1))
        return EdgeSet(masks)


class LastStepPruner:
    """Do not train the last step: its sample cannot change the reward, which is decoded from the
    x̂0 predicted before it."""

    def __init__(self) -> None:
        pass

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        masks = list(edges.masks)
        masks[-1] = torch.zeros_like(masks[-1])
        return EdgeSet(masks)
