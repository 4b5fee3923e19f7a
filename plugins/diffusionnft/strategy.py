"""DiffusionNFT as a preset: deterministic rollouts from the old policy, per-prompt advantages over a global
std, the negative-aware objective on the forward process, an EMA with the released warm-up."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

DIFFUSIONNFT = Preset(
    description="DiffusionNFT (Zheng et al. 2025, released as NVlabs/DiffusionNFT): the chains topology (G = 24 "
                "chains per prompt, each from its own initial noise) rolled out deterministically with second-order "
                "DPM-Solver++ over 10 steps (shift 3) by the old policy; the group advantage with the release's "
                "statistics (per-prompt mean, population std over every rank's samples + 1e-4); the diffusionnft "
                "objective (β 1, advantages clipped to ±5, 9 of 10 noise levels per sample, KL 1e-4, the old policy's "
                "decay min(0.001·s, 0.5) after every iteration); one optimizer step per iteration over whole "
                "samples; an EMA of the weights with decay min((1 + s)/(10 + s), 0.9) after every optimizer step.",
    topology=Part("chains", group_size=24, same_latent=False),
    advantage=Part("group", std="global", std_ddof=0, std_eps=1e-4, stats_precision="fp64"),
    objective=Part("diffusionnft", beta=1.0, adv_clip=5.0, timestep_fraction=0.99, kl_beta=1e-4,
                   old_decay_rate=0.001, old_decay_max=0.5, sample_with="old"),
    solver=Part("dpm-solver++", order=2),
    sampler=Part("ode", steps=10, shift=3.0),
    train={"accumulation_unit": "chains", "optimizer_steps": 1, "ema_decay": 0.9, "ema_every": 1,
           "ema_warmup": True},
)
