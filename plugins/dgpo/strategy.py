"""DGPO as a preset: deterministic rollouts, per-prompt advantages over a global std, the group preference on
the forward process against an EMA reference that later makes the rollouts, an EMA for evaluation."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

DGPO = Preset(
    description="Direct Group Preference Optimization (Luo et al. 2026, released as Luo-Yihong/DGPO, the CFG-free "
                "mode with a dynamic EMA reference, config/dgpo_wocfg_emaref.py `general_ocr_sd3_4gpu`): the chains "
                "topology (G = 16 chains per prompt, each from its own initial noise) rolled out deterministically "
                "with second-order DPM-Solver++ over 10 steps (shift 3); the group advantage with the release's "
                "statistics (per-prompt mean, population std over every rank's samples + 1e-4); the dgpo objective "
                "(each group at 4 distinct levels among the first 7 with one shared noise draw, β_dpo 2000, "
                "advantages clipped to ±5, the PPO-style clip 1e-5 on the denoising error, KL 1e-3 to the base "
                "policy, an EMA reference with decay min(0.001·s, 0.3) after every optimizer step that makes the "
                "rollouts after 200 steps); one optimizer step per iteration over whole groups; the released EMA of "
                "the weights (decay min((1 + s)/(10 + s), 0.9) after optimizer steps 7, 15, …, blended twice in a row "
                "with the same weights, since the release steps it once per sample batch and accumulates two).",
    topology=Part("chains", group_size=16, same_latent=False),
    advantage=Part("group", std="global", std_ddof=0, std_eps=1e-4, stats_precision="fp64"),
    objective=Part("dgpo", beta_dpo=2000.0, train_timesteps=4, trunc_steps=6, shared_noise=True, adv_clip=5.0,
                   kl_beta=1e-3, use_ema_ref=True, clip_range=1e-5, clip_dsm=True, clip_kl=False,
                   ema_decay_rate=0.001, ema_decay_max=0.3, switch_ema_ref=200),
    solver=Part("dpm-solver++", order=2),
    sampler=Part("ode", steps=10, shift=3.0),
    train={"accumulation_unit": "chains", "optimizer_steps": 1, "ema_decay": 0.9, "ema_every": 8,
           "ema_warmup": True, "ema_schedule": "flow-grpo", "ema_repeats": 2},
)
