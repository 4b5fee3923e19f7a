"""The BranchGRPO and BranchGRPO-Mix strategies (arXiv 2509.06040), with the reference defaults.

Both compose registered parts by name: the ``branching`` topology (with an SDE window for Mix),
the ``depth-wise`` advantage, and the ``depth``, ``width`` and ``last-step`` pruners. Their shared
options are one dataclass; neither strategy derives from the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from grpo.core.schema import Doc, Part, Range
from grpo.core.strategy import Make, StrategyParts

from .topology import (
    BranchFactor,
    NumSplits,
    SplitNoiseScale,
    SplitPoints,
    WindowSlideEvery,
    WindowStart,
    WindowStride,
)

Topology, Advantage, Pruner = Part("topology"), Part("advantage"), Part("pruner")


@dataclass(kw_only=True)
class BranchOptions:
    """The options BranchGRPO and BranchGRPO-Mix share (the released settings by default)."""

    split_points: Annotated[SplitPoints, Topology] = field(default_factory=lambda: [0, 3, 6, 9])
    num_splits: Annotated[NumSplits, Topology] = 0
    branch_factor: Annotated[BranchFactor, Topology] = 2
    split_noise_scale: Annotated[SplitNoiseScale, Topology] = 4.0
    split_logprob: Annotated[Literal["nominal", "scaled"], Doc("τ (reference) or λ·τ on split edges")] = "nominal"
    fusion: Annotated[Literal["mean", "path-prob"], Advantage, Doc("reward of internal nodes")] = "mean"
    fusion_alpha: Annotated[float, Range(ge=0), Advantage, Doc("temperature α of path-prob fusion")] = 1.0
    clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-3
    advantage_clamp: Annotated[float, Range(gt=0), Advantage, Doc("bound on the magnitude of an advantage")] = 5.0
    pruned_depths: Annotated[list[int], Range(ge=1), Pruner, Doc("child depths not trained (empty = none)")] = field(
        default_factory=list)
    depth_slide_every: Annotated[int, Range(ge=0), Pruner, Doc("iterations between depth-set slides (0 = fixed)")] = 0
    depth_stop: Annotated[int, Range(ge=-1), Pruner, Doc("shallowest depth of a sliding set (-1 = last split)")] = -1
    width_ratio: Annotated[float, Range(ge=0, le=1), Pruner,
                           Doc("share of chains kept after the last split (0 = no width pruning)")] = 0.0
    width_pooled: Annotated[bool, Pruner, Doc("rank chains over all of this rank's trees, not per tree")] = False
    width_pooled_across_ranks: Annotated[bool, Pruner, Doc("with width_pooled: over every rank's trees")] = False
    pruning_fraction: Annotated[float, Range(ge=0, le=1), Pruner, Doc("prune during this share of training")] = 1.0
    train_last_step: Annotated[bool, Pruner, Doc("train the last step's edges (the reference does)")] = True


def branch_parts(o: BranchOptions, make: Make, window: dict[str, Any]) -> StrategyParts:
    """The parts of BranchGRPO (an empty `window`) or of BranchGRPO-Mix (its SDE window's options)."""
    pruners = []
    if o.pruned_depths:
        pruners.append(make("pruner", "depth", pruned_depths=o.pruned_depths, depth_slide_every=o.depth_slide_every,
                            depth_stop=o.depth_stop, pruning_fraction=o.pruning_fraction))
    if o.width_ratio > 0:
        pruners.append(make("pruner", "width", width_ratio=o.width_ratio, width_pooled=o.width_pooled,
                            pruning_fraction=o.pruning_fraction, width_pooled_across_ranks=o.width_pooled_across_ranks))
    if not o.train_last_step:
        pruners.append(make("pruner", "last-step"))
    topology = make("topology", "branching", split_points=o.split_points, num_splits=o.num_splits,
                    branch_factor=o.branch_factor, split_noise_scale=o.split_noise_scale, **window)
    advantage = make("advantage", "depth-wise", fusion=o.fusion, fusion_alpha=o.fusion_alpha,
                     advantage_clamp=o.advantage_clamp)
    return StrategyParts(topology=topology, advantage=advantage, pruners=pruners, clip_range=o.clip_range,
                         sampler="dance-sde", split_logprob=o.split_logprob,
                         sampler_defaults={"steps": 20, "shift": 3.0, "eta": 0.3})  # the released settings


@dataclass(kw_only=True)
class BranchGRPO(BranchOptions):
    """BranchGRPO: a branching rollout tree, fused rewards, depth-wise advantages, optional pruning.

    Defaults follow the released settings: split points 0, 3, 6, 9 with b = 2 (16 leaves at T = 20),
    λ = 4, the split edge's log-probability with the nominal τ (``split_logprob = "nominal"``),
    mean fusion, clip 1e-3. Two of the reference code's quirks are options here: ``"scaled"``
    evaluates split edges with λ·τ, the density they were drawn from; ``train_last_step = false``
    skips the last step, whose sample cannot change the reward.
    """

    def build(self, make: Make) -> StrategyParts:
        return branch_parts(self, make, {})


@dataclass(kw_only=True)
class BranchGRPOMix(BranchOptions):
    """BranchGRPO-Mix: split steps and a window of w steps are SDE, every other step is a
    deterministic ODE step that has no log-probability and is never trained.

    The window (start, size, optional progressive slide) is independent of depth pruning; in the
    reference code its stride was tied to the depth-pruning slide interval. ``flash_ratio`` > 0 is
    BranchGRPO-Mix-Flash (not in any released code): the tail of ODE steps after the last split or
    window step runs MixGRPO-Flash's second-order solver on its compressed grid.
    """

    window_size: Annotated[int, Range(ge=1), Topology, Doc("SDE window size w")] = 4
    window_start: Annotated[WindowStart, Topology] = 0
    window_slide_every: Annotated[WindowSlideEvery, Topology] = 0
    window_stride: Annotated[WindowStride, Topology] = 1
    flash_ratio: Annotated[float, Range(ge=0, lt=1), Topology, Doc(
        "Mix-Flash: the ODE steps after the last SDE step run DPM-Solver++ (second order) on a grid of "
        "⌊(T − last)·ratio⌋ points, as MixGRPO-Flash (0 = Euler on the sampler's grid)")] = 0.0

    def build(self, make: Make) -> StrategyParts:
        return branch_parts(self, make, dict(window_size=self.window_size, window_start=self.window_start,
                                             window_slide_every=self.window_slide_every,
                                             window_stride=self.window_stride, flash_ratio=self.flash_ratio))
