"""DanceGRPO as a preset: G chains per prompt from shared initial noise, group advantages, a random share
of each chain's steps trained with the clipped ratio."""

from __future__ import annotations

from grpo.core.strategy import Part, Preset

DANCEGRPO = Preset(
    description="DanceGRPO (Xue et al. 2025) as a tree: the fan topology (a root fanning out into G chains that "
                "share the initial noise), the group advantage, the timestep-fraction pruner and the clipped ratio; "
                "Dance-SDE with 16 steps, shift 3 and η 0.3 as the released FLUX scripts.",
    topology=Part("fan", group_size=12, noise_scale=1.0),
    advantage=Part("group"),
    pruners=(Part("timestep-fraction", timestep_fraction=0.6),),
    objective=Part("clipped-ratio", clip_range=1e-4),
    sampler=Part("dance-sde", steps=16, shift=3.0, eta=0.3),
)
