"""Flow-GRPO: G independent chains per prompt on Flow-SDE, per-prompt advantages with a global std."""

from __future__ import annotations

from typing import Annotated, Literal

from grpo.core.schema import Doc, Part, Range
from grpo.core.strategy import Make, StrategyParts

Topology, Advantage, Pruner = Part("topology"), Part("advantage"), Part("pruner")


class FlowGRPO:
    """Flow-GRPO (Liu et al. 2025, released as yifan123/flow_grpo) as parts: the ``chains``
    topology (G chains per prompt, each from its own initial noise; ``same_latent`` shares it),
    the ``group`` advantage with Flow-GRPO's statistics (per-prompt mean; the std over every rank's
    samples with ``global_std``, else the prompt's own; population std + 1e-4; clamp 5) and the
    ``timestep-fraction`` pruner (the first ⌊f·T⌋ steps of each chain trained, f = 0.99 as released).

    **Flow-GRPO-Fast** (``sde_window_size`` > 0): the ``sde-window`` topology with a window of that
    many SDE steps whose start is drawn uniformly from ``sde_window_range`` every iteration (the
    same on every rank), ODE before and after, and every window step trained (no timestep
    fraction). The released Fast configs use a window of 3 in [0, 5), the ``cps`` sampler with
    η = 0.8, clip 1e-5 and no KL. The released code runs every chain's ODE prefix itself; with
    ``same_latent`` the prefix is the same for the whole group and is computed once here.

    The sampler is ``flow-sde`` with η = 0.7 over 10 steps. The KL penalty to the reference is
    ``[train] kl_beta`` with ``kl_form = "flow-grpo"``; classifier-free guidance is the model's
    (``guidance_scale`` of SD3.5), applied in rollout and update alike.
    """

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Topology, Doc("samples per prompt G")] = 24,
        same_latent: Annotated[bool, Topology, Doc("one initial noise per prompt's group instead of G")] = False,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Pruner, Doc("share of steps trained per chain")] = 0.99,
        global_std: Annotated[bool, Advantage, Doc("divide by the std over every rank's samples")] = True,
        advantage_clamp: Annotated[float, Range(gt=0), Advantage, Doc("bound on the magnitude of an advantage")] = 5.0,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-4,
        step_rounding: Annotated[Literal["up", "down"], Pruner, Doc(
            "⌊f·T⌋ steps per chain as released, or ⌈f·T⌉")] = "down",
        sde_window_size: Annotated[int, Range(ge=0), Topology, Doc(
            "Flow-GRPO-Fast: SDE only in a window of this many steps, ODE elsewhere (0 = SDE everywhere)")] = 0,
        sde_window_range: Annotated[list[int], Topology, Doc(
            "Flow-GRPO-Fast: [lo, hi) of the window's steps; its start is drawn uniformly each iteration "
            "(the released [0, T/2) for T = 10)")] = [0, 5],  # noqa: B006
    ) -> None:
        self.group_size, self.same_latent = group_size, same_latent
        self.timestep_fraction, self.step_rounding = timestep_fraction, step_rounding
        self.global_std, self.advantage_clamp, self.clip_range = global_std, advantage_clamp, clip_range
        self.sde_window_size, self.sde_window_range = sde_window_size, list(sde_window_range)

    def topology(self, make: Make):
        if not self.sde_window_size:
            return make("topology", "chains", group_size=self.group_size, same_latent=self.same_latent)
        return make("topology", "sde-window", group_size=self.group_size, same_latent=self.same_latent,
                    window_size=self.sde_window_size, window_range=self.sde_window_range, schedule="random")

    def build(self, make: Make) -> StrategyParts:
        pruners = []
        if self.timestep_fraction < 1.0 and not self.sde_window_size:
            pruners.append(make("pruner", "timestep-fraction", timestep_fraction=self.timestep_fraction,
                                step_rounding=self.step_rounding, step_choice="first"))
        return StrategyParts(
            topology=self.topology(make),
            advantage=make("advantage", "group", advantage_clamp=self.advantage_clamp,
                           std="global" if self.global_std else "group", std_ddof=0, std_eps=1e-4),
            pruners=pruners,
            clip_range=self.clip_range,
            sampler="flow-sde",
            sampler_defaults={"steps": 10, "shift": 3.0, "noise_level": 0.7},  # the released SD3.5 settings
        )
