"""The optional members of the component protocols, and their documented defaults.

A plugin's component may leave out any member listed here. ``grpo.core.registry.complete`` gives
it the default, once, when the component is built, so that the engine calls every member directly
and never asks whether a component has it. The defaults are part of the protocols' documentation
(``Sampler``, ``Policy``, ``Backend``, ``RewardModel``, ``AdvantageEstimator``, ``Pruner``,
``Objective``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .sampler import draw_noise, gaussian_log_prob


def _sampler_draw_noise(self: Any, counts: torch.Tensor, shape: tuple[int, ...],
                        generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    return draw_noise(counts, shape, generator, self.noise_block)


def _sampler_log_prob(self: Any, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return gaussian_log_prob(x, mean, std, self.noise_block)


def _policy_snapshot_reference(self: Any) -> None:
    raise UserError(f"model {type(self).__name__} keeps no reference policy, which the objective needs (for its "
                    "KL term)", where="strategy.objective", hint="turn the objective's KL term off (kl_beta = 0)")


def _policy_export(self: Any, directory: Path) -> None:
    raise UserError(f"model {type(self).__name__} cannot export its weights (it has no export())", where="model.use")


def _backend_read_trained(self: Any, directory: Path) -> dict[str, torch.Tensor]:
    raise UserError(f"backend {type(self).__name__} cannot read a checkpoint's weights (it has no read_trained())",
                    where="backend.use")


def _policy_place_reference(self: Any, place: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
    return None


def _policy_noise_grid(self: Any) -> tuple[int, ...]:
    return tuple(self.latent_shape)


def _identity(self: Any, x: torch.Tensor) -> torch.Tensor:
    return x


def _pruner_check_plan(self: Any, plan: Any) -> None:
    return None


def _objective_check_plan(self: Any, plan: Any, sampler: Any) -> None:
    return None


def _backend_memory(self: Any) -> dict[str, int]:
    return {}


def _backend_place_frozen(self: Any, module: torch.nn.Module) -> torch.nn.Module:
    return module


def _reward_check_prompts(self: Any, prompts: list[str], where: str) -> None:
    return None


def _backend_weights_finite(self: Any, parameters: list[torch.nn.Parameter]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in parameters)


def _policy_sigma_schedule(self: Any) -> None:
    return None


def _backend_runtime(self: Any) -> dict[str, str]:
    return {"device": str(self.device)}


# kind -> member -> default (a plain value, or a function taking the component first)
DEFAULTS: dict[str, dict[str, Any]] = {
    "sampler": {
        "shift": 1.0,  # the σ grid's timestep shift (evaluation's ODE uses the same grid)
        "times": None,  # the grid's unshifted times 1 − k/T, until the model's pipeline grid replaces them
        "noise_block": 1,  # exploration noise per element
        "noise_scales_with_step": True,  # τ = g·√Δ (Flow-GRPO's KL form divides by g², the Gaussian KL × Δ)
        "draw_noise": _sampler_draw_noise,  # standard normal noise, one draw per noise_block² tile
        "log_prob": _sampler_log_prob,  # Gaussian density of the tile means of x − mean
    },
    "model": {
        "fps": 0,  # not a video model
        "snapshot_reference": _policy_snapshot_reference,  # a KL penalty is refused
        "place_reference": _policy_place_reference,  # the reference stays where it is
        "noise_grid": _policy_noise_grid,  # exploration noise tiles the latent itself ...
        "to_noise_grid": _identity,  # ... so latents need no conversion to that grid
        "from_noise_grid": _identity,
        "export": _policy_export,  # grpo export refuses the model
        "sigma_schedule": _policy_sigma_schedule,  # samples on the sampler's own σ grid
    },
    "backend": {
        "memory": _backend_memory,  # nothing reported
        "place_frozen": _backend_place_frozen,  # a frozen module stays as the policy made it
        "runtime": _backend_runtime,  # the device only
        "weights_finite": _backend_weights_finite,  # every trained parameter checked where it lives
        "read_trained": _backend_read_trained,  # grpo export refuses the backend
    },
    "reward": {
        "fps": None,  # a reward that does not look at frame rates
        "check_prompts": _reward_check_prompts,  # scores any prompt
    },
    "advantage": {
        "uses_all_ranks": False,  # called as estimator(rollout, rewards), on this rank's trees alone
        "needs_log_prob": False,  # reads no rollout.log_prob (path-prob fusion does)
    },
    "pruner": {
        "check_plan": _pruner_check_plan,  # accepts every tree
    },
    "solver": {
        "uses_previous": True,  # handed the node's previous step (a multistep solver)
    },
    "objective": {
        "needs_reference": False,  # no frozen copy of the base policy
        "lag": None,  # no lagged copy of the trained weights
        "check_plan": _objective_check_plan,  # trains on any rollout
    },
}
