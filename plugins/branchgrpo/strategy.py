"""BranchGRPO and BranchGRPO-Mix as presets (arXiv 2509.06040), with the released settings: the branching
tree, depth-wise advantages of fused rewards, depth and width pruning, the clipped ratio."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

BRANCHGRPO = Preset(
    description="BranchGRPO: a branching rollout tree (splits at steps 0, 3, 6, 9 into b = 2 with split noise λ = 4: "
                "16 leaves at T = 20), mean reward fusion and depth-wise advantages, the depth and width pruners "
                "(off as released: no pruned depth, every chain kept), the clipped ratio with clip 1e-3 and a split "
                "edge's density with the nominal τ; Dance-SDE over 20 steps, shift 3, η 0.3. The reference code's "
                "quirks are options: split_logprob = \"scaled\" scores split edges with λ·τ; the last-step pruner "
                "skips the last step, whose sample cannot change the reward.",
    topology=Part("branching", split_points=[0, 3, 6, 9], branch_factor=2, split_noise_scale=4.0),
    advantage=Part("depth-wise", fusion="mean"),
    pruners=(Part("depth", pruned_depths=[]), Part("width", width_ratio=1.0)),
    objective=Part("clipped-ratio", clip_range=1e-3, split_logprob="nominal"),
    sampler=Part("dance-sde", steps=20, shift=3.0, eta=0.3),
)

BRANCHGRPO_MIX = BRANCHGRPO.derive(
    description="BranchGRPO-Mix: BranchGRPO whose split steps and a window of 4 steps from step 0 are SDE and every "
                "other step a deterministic ODE step, never trained. The window (start, size, optional progressive "
                "slide) is independent of depth pruning (in the reference code its stride was tied to the "
                "depth-pruning slide interval); flash_ratio > 0 runs the ODE tail after the last SDE step with "
                "DPM-Solver++ on a compressed grid (Mix-Flash, not in any released code). Its ODE steps belong to "
                "the topology: replacing it trains whatever the new tree makes stochastic.",
    topology={"window_size": 4, "window_start": 0, "window_slide_every": 0, "window_stride": 1},
)
