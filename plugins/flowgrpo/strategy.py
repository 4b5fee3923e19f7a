"""Flow-GRPO and Flow-GRPO-Fast as presets: G independent chains per prompt on Flow-SDE, per-prompt
advantages over a global std, the KL in Flow-GRPO's form and an EMA of the weights."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

FLOWGRPO = Preset(
    description="Flow-GRPO (Liu et al. 2025, released as yifan123/flow_grpo): the chains topology (G chains per "
                "prompt, each from its own initial noise), the group advantage with Flow-GRPO's statistics "
                "(per-prompt mean, population std over every rank's samples + 1e-4, clamp 5), the first ⌊0.99·T⌋ "
                "steps of each chain trained, the clipped ratio with clip 1e-4 and the KL to the base policy in "
                "Flow-GRPO's form (β 0.04, its SD3.5 GenEval and OCR configs), the released EMA of the weights (decay "
                "min((1 + s)/(10 + s), 0.9) after optimizer steps 7, 15, …, blended twice in a row with the same "
                "weights as its 32-GPU configs' gradient accumulation of 2 does); Flow-SDE with η 0.7 over 10 steps, "
                "shift 3.",
    topology=Part("chains", group_size=24, same_latent=False),
    advantage=Part("group", std="global", std_ddof=0, std_eps=1e-4, stats_precision="fp64"),
    pruners=(Part("timestep-fraction", timestep_fraction=0.99, step_rounding="down", step_choice="first"),),
    objective=Part("clipped-ratio", clip_range=1e-4, kl_beta=0.04, kl_form="flow-grpo"),
    sampler=Part("flow-sde", steps=10, shift=3.0, noise_level=0.7),
    train={"ema_decay": 0.9, "ema_every": 8, "ema_warmup": True, "ema_schedule": "flow-grpo", "ema_repeats": 2},
)

FLOWGRPO_FAST = FLOWGRPO.derive(
    description="Flow-GRPO-Fast as released: Flow-GRPO whose chains are SDE only inside a window of 3 steps within "
                "[0, T//2), its start drawn uniformly every iteration (the same on every rank), ODE before and after, "
                "every window step trained; the CPS sampler with η 0.8, clip 1e-5, no KL. With same_latent the "
                "group's shared ODE prefix is computed once.",
    topology=Part("sde-window", group_size=24, same_latent=False, window_size=3, window_range=[0, 0.5],
                  schedule="random"),
    pruners=(),
    objective={"clip_range": 1e-5, "kl_beta": 0.0},
    sampler=Part("cps", steps=10, shift=3.0, eta=0.8),
)
