"""The BranchGRPO and BranchGRPO-Mix strategies (arXiv 2509.06040), with the reference defaults."""

from __future__ import annotations

from typing import Annotated, Literal

from grpo.core.schema import Doc, Range
from grpo.core.strategy import StrategyParts

from .advantage import DepthWiseAdvantage
from .pruners import DepthPruner, LastStepPruner, WidthPruner
from .topology import (
    BranchFactor,
    Branching,
    NumSplits,
    SplitNoiseScale,
    SplitPoints,
    WindowSlideEvery,
    WindowStart,
    WindowStride,
)


class BranchGRPO:
    """BranchGRPO: a branching rollout tree, fused rewards, depth-wise advantages, optional pruning.

    Defaults follow the released settings: split points 0, 3, 6, 9 with b = 2 (16 leaves at T = 20),
    λ = 4, the split edge's log-probability with the nominal τ (``split_logprob = "nominal"``),
    mean fusion, clip 1e-3. Two of the reference code's quirks are options here: ``"scaled"``
    evaluates split edges with λ·τ, the density they were drawn from; ``train_last_step = false``
    skips the last step, whose sample cannot change the reward.
    """

    def __init__(
        self,
        *,
        split_points: SplitPoints = [0, 3, 6, 9],  # noqa: B006
        num_splits: NumSplits = 0,
        branch_factor: BranchFactor = 2,
        split_noise_scale: SplitNoiseScale = 4.0,
        split_logprob: Annotated[Literal["nominal", "scaled"], Doc("τ (reference) or λ·τ on split edges")] = "nominal",
        fusion: Annotated[Literal["mean", "path-prob"], Doc("reward of internal nodes")] = "mean",
        fusion_alpha: Annotated[float, Range(ge=0), Doc("temperature α of path-prob fusion")] = 1.0,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-3,
        advantage_clamp: Annotated[float, Range(gt=0), Doc("bound on the magnitude of an advantage")] = 5.0,
        depth_pruning: Annotated[list[int], Range(ge=1), Doc("child depths not trained (empty = none)")] = [],  # noqa: B006
        depth_slide_every: Annotated[int, Range(ge=0), Doc("iterations between depth-set slides (0 = fixed)")] = 0,
        depth_stop: Annotated[int, Range(ge=-1), Doc("shallowest depth of a sliding set (-1 = last split)")] = -1,
        width_pruning: Annotated[float, Range(ge=0, le=1), Doc("share of chains kept after the last split (0 = off)")] = 0.0,
        width_pooled: Annotated[bool, Doc("rank chains over all of this rank's trees, not per tree")] = False,
        width_pooled_across_ranks: Annotated[bool, Doc("with width_pooled: over every rank's trees")] = False,
        pruning_fraction: Annotated[float, Range(ge=0, le=1), Doc("prune during this share of training")] = 1.0,
        train_last_step: Annotated[bool, Doc("train the last step's edges (the reference does)")] = True,
    ) -> None:
        self.topology = self._topology(split_points, num_splits, branch_factor, split_noise_scale)
        self.split_logprob = split_logprob
        self.advantage = DepthWiseAdvantage(fusion=fusion, alpha=fusion_alpha, clamp=advantage_clamp)
        self.clip_range = clip_range
        self.pruners: list = []
        if depth_pruning:
            self.pruners.append(DepthPruner(depths=depth_pruning, slide_every=depth_slide_every, stop_depth=depth_stop,
                                            active_fraction=pruning_fraction))
        if width_pruning > 0:
            self.pruners.append(WidthPruner(ratio=width_pruning, pooled=width_pooled, active_fraction=pruning_fraction,
                                            across_ranks=width_pooled_across_ranks))
        if not train_last_step:
            self.pruners.append(LastStepPruner())

    def _topology(self, split_points, num_splits, branch_factor, split_noise_scale) -> Branching:
        return Branching(split_points=split_points, num_splits=num_splits, branch_factor=branch_factor,
                         split_noise_scale=split_noise_scale)

    def build(self) -> StrategyParts:
        return StrategyParts(topology=self.topology, advantage=self.advantage, pruners=list(self.pruners),
                             clip_range=self.clip_range, sampler="dance-sde", split_logprob=self.split_logprob,
                             sampler_defaults={"steps": 20, "shift": 3.0, "eta": 0.3})  # the released settings


class BranchGRPOMix(BranchGRPO):
    """BranchGRPO-Mix: split steps and a window of w steps are SDE, every other step is a
    deterministic ODE step that has no log-probability and is never trained.

    The window (start, size, optional progressive slide) is independent of depth pruning; in the
    reference code its stride was tied to the depth-pruning slide interval.
    """

    def __init__(
        self,
        *,
        window_size: Annotated[int, Range(ge=1), Doc("SDE window size w")] = 4,
        window_start: WindowStart = 0,
        window_slide_every: WindowSlideEvery = 0,
        window_stride: WindowStride = 1,
        **options,
    ) -> None:
        self._window = dict(window_size=window_size, window_start=window_start,
                            window_slide_every=window_slide_every, window_stride=window_stride)
        super().__init__(**options)

    def _topology(self, split_points, num_splits, branch_factor, split_noise_scale) -> Branching:
        return Branching(split_points=split_points, num_splits=num_splits, branch_factor=branch_factor,
                         split_noise_scale=split_noise_scale, **self._window)
