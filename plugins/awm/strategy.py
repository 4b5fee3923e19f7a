"""AWM as a preset: deterministic rollouts by the trained weights, per-prompt advantages over a global std,
the advantage-weighted matching objective on the forward process, an EMA with the released warm-up."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

AWM = Preset(
    description="Advantage Weighted Matching (Xue et al. 2025, released as scxue/advantage_weighted_matching, "
                "config pickscore_sd3_no_cfg_1node): the chains topology (G = 24 chains per prompt, each from its "
                "own initial noise) rolled out deterministically over 14 steps (shift 3) by the trained weights, "
                "with second-order DPM-Solver++ where the release uses SA-Solver without noise; the group advantage "
                "with the release's statistics (per-prompt mean, population std over every rank's samples + 1e-4); "
                "the awm objective (6 stratified noise levels among the first 90% of the grid per sample, the "
                "generalised Huber surrogate with p = 0.25, advantages clipped to ±5 and scaled to ±1, KL 1e-4 to "
                "the base policy and 1 to an EMA whose decay is min(0.001·s, 0.3) after every iteration); one "
                "optimizer step per iteration over whole samples; an EMA of the weights with decay "
                "min((1 + s)/(10 + s), 0.99) after every optimizer step.",
    topology=Part("chains", group_size=24, same_latent=False),
    advantage=Part("group", std="global", std_ddof=0, std_eps=1e-4, stats_precision="fp64"),
    objective=Part("awm", train_timesteps=6, timestep_fraction=0.9, time_type="discrete", weighting="ghuber",
                   ghuber_power=0.25, adv_clip=5.0, advantage_max=1.0, clip_range=1.0, kl_beta=1e-4,
                   ema_beta=1.0, ema_decay_rate=0.001, ema_decay_max=0.3, off_policy=False),
    solver=Part("dpm-solver++", order=2),
    sampler=Part("ode", steps=14, shift=3.0),
    train={"accumulation_unit": "chains", "optimizer_steps": 1, "ema_decay": 0.99, "ema_every": 1,
           "ema_warmup": True},
)
