"""A strategy that composes built-in parts (the fan tree, the timestep fraction, the clipped ratio) with
this plugin's own (rank advantages, the top-|advantage| pruner), all by registered name."""

from grpo.core.strategy import Part, Preset

RANK_GRPO = Preset(
    description="DanceGRPO's fan of G chains with rank advantages, training the highest-|advantage| edges of a "
                "random 60% of each chain's steps.",
    topology=Part("fan", group_size=8, noise_scale=1.0),
    advantage=Part("rank"),
    pruners=(Part("timestep-fraction", timestep_fraction=0.6), Part("top-advantage", keep=0.5)),
    objective=Part("clipped-ratio", clip_range=1e-3),
    sampler=Part("dance-sde", steps=16, shift=1.0, eta=0.5),
)
