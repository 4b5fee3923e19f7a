"""BranchGRPO's pruners: they narrow the trained edges, never the rollout or the advantages."""

from __future__ import annotations

from typing import Annotated

import torch

from grpo.core.pruner import PruneContext
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout


def _active(ctx: PruneContext, fraction: float) -> bool:
    """Pruning runs during the first `fraction` of training (``pruning_step_ratio``)."""
    return ctx.iteration <= int(ctx.total_iterations * fraction)


class DepthPruner:
    """Drop the edges whose child depth is in `depths`.

    With `slide_every` > 0 the set moves one depth shallower every `slide_every` iterations, until
    its shallowest depth reaches `stop_depth` (default, -1: the last split point).
    """

    def __init__(
        self,
        *,
        depths: Annotated[list[int], Range(ge=1), Doc("child depths whose edges are not trained")],
        slide_every: Annotated[int, Range(ge=0), Doc("iterations between slides (0 = fixed)")] = 0,
        stop_depth: Annotated[int, Range(ge=-1), Doc("shallowest depth of a sliding set (-1 = last split point)")] = -1,
        active_fraction: Annotated[float, Range(ge=0, le=1), Doc("prune during this share of training")] = 1.0,
    ) -> None:
        self.depths = sorted(depths)
        self.slide_every, self.stop_depth, self.active_fraction = slide_every, stop_depth, active_fraction

    def active_depths(self, rollout: Rollout, iteration: int) -> set[int]:
        if not self.depths:
            return set()
        shift = iteration // self.slide_every if self.slide_every else 0
        splits = rollout.plan.split_steps
        stop = self.stop_depth if self.stop_depth >= 0 else (splits[-1] if splits else 0)
        shift = min(shift, max(0, self.depths[0] - stop))
        return {d - shift for d in self.depths}

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        if not _active(ctx, self.active_fraction):
            return edges
        drop = self.active_depths(rollout, ctx.iteration)
        return EdgeSet([m & (k + 1 not in drop) for k, m in enumerate(edges.masks)])


class WidthPruner:
    """After the last split, train only whole chains of the best and worst leaves by advantage:
    ``keep = max(2, ⌊ratio·L⌋)`` of the L leaves, half from the top and the rest from the bottom.

    Leaves are ranked within each tree (default) or pooled over this rank's trees; with
    `across_ranks` the pool is every tree of the iteration on every rank (one gather per iteration).
    Split edges and every edge up to the last split are always kept.
    """

    def __init__(
        self,
        *,
        ratio: Annotated[float, Range(gt=0, le=1), Doc("share of chains kept after the last split")] = 0.5,
        pooled: Annotated[bool, Doc("rank leaves over all trees of the iteration, not per tree")] = False,
        active_fraction: Annotated[float, Range(ge=0, le=1), Doc("prune during this share of training")] = 1.0,
        across_ranks: Annotated[bool, Doc("with pooled: pool over every rank's trees")] = False,
    ) -> None:
        self.ratio, self.pooled, self.active_fraction = ratio, pooled, active_fraction
        self.across_ranks = across_ranks

    def kept_leaves(self, rollout: Rollout, leaf_advantage: torch.Tensor) -> torch.Tensor:
        """Boolean (N_T,) of leaves whose chains are trained."""
        group = leaf_advantage.numel() if self.pooled else rollout.plan.leaves
        keep = torch.zeros_like(leaf_advantage, dtype=torch.bool)
        for start in range(0, leaf_advantage.numel(), group):
            adv = leaf_advantage[start : start + group]
            n_keep = min(max(2, int(adv.numel() * self.ratio)), adv.numel())
            order = torch.argsort(adv, descending=True, stable=True)
            best = n_keep // 2
            chosen = torch.cat([order[:best], order[adv.numel() - (n_keep - best) :]])
            keep[start + chosen] = True
        return keep

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        splits = rollout.plan.split_steps
        if not splits or not _active(ctx, self.active_fraction):
            return edges
        last = splits[-1]
        leaf_adv = advantages.values[-1]
        if self.pooled and self.across_ranks:
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
