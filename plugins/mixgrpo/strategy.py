"""MixGRPO and MixGRPO-Flash as presets: chains from one initial noise, SDE only inside a sliding window,
ODE elsewhere (for Flash, DPM-Solver++ on a compressed grid after the window)."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

MIXGRPO = Preset(
    description="MixGRPO (released as Tencent-Hunyuan/MixGRPO): the sde-window topology (G chains sharing their "
                "initial noise and ODE prefix, split at the window's first step; SDE for 4 steps, ODE after) with "
                "the released progressive schedule (one step every 25 iterations over steps 0 … T − 3, rolling back "
                "at the end), the group advantage and the clipped ratio (clip 1e-4); only the window's steps are "
                "trained. Flow-SDE with η 0.7 over 25 steps, shift 3, as the released FLUX scripts. Its ODE steps "
                "belong to the topology: replacing it trains whatever the new tree makes stochastic.",
    topology=Part("sde-window", group_size=12, same_latent=True, window_size=4, window_range=[0, -2],
                  schedule="progressive", iters_per_window=25, window_stride=1),
    advantage=Part("group"),
    objective=Part("clipped-ratio", clip_range=1e-4),
    sampler=Part("flow-sde", steps=25, shift=3.0, noise_level=0.7),
)

MIXGRPO_FLASH = MIXGRPO.derive(
    description="MixGRPO-Flash as released: MixGRPO with the ODE steps after the window run by second-order "
                "DPM-Solver++ (midpoint) on a grid compressed by 0.4, and the window moving every 20 iterations. At "
                "T = 25 and a window at steps 0-3, a chain costs 11 forwards instead of 25.",
    topology={"iters_per_window": 20, "flash_ratio": 0.4},
)
