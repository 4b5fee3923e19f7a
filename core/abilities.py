"""The optional members of the component protocols, and their documented defaults.

A plugin's component may leave out any member listed here. ``complete(component, kind)`` gives it
the default, once, when the component is built, so that the engine calls every member directly
and never asks whether a component has it. The defaults are part of the protocols' documentation
(``Sampler``, ``Policy``, ``Backend``, ``RewardModel``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
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
    raise UserError(f"model {type(self).__name__} keeps no reference policy, which the KL penalty needs",
                    where="train.kl_beta", hint="set train.kl_beta = 0 for this model")


def _policy_place_reference(self: Any, place: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
    return None


def _policy_noise_grid(self: Any) -> tuple[int, ...]:
    return tuple(self.latent_shape)


def _identity(self: Any, x: torch.Tensor) -> torch.Tensor:
    return x


def _pruner_check_plan(self: Any, plan: Any) -> None:
    return None


def _backend_memory(self: Any) -> dict[str, int]:
    return {}


def _backend_place_frozen(self: Any, module: torch.nn.Module) -> torch.nn.Module:
    return module


def _backend_runtime(self: Any) -> dict[str, str]:
    return {"device": str(self.device)}


# kind -> member -> default (a plain value, or a function taking the component first)
DEFAULTS: dict[str, dict[str, Any]] = {
    "sampler": {
        "shift": 1.0,  # the σ grid's timestep shift (evaluation's ODE uses the same grid)
        "noise_block": 1,  # exploration noise per element
        "draw_noise": _sampler_draw_noise,  # standard normal noise, one draw per noise_block² tile
        "log_prob": _sampler_log_prob,  # Gaussian density of the tile means of x − mean
    },
    "policy": {
        "fps": 0,  # not a video model
        "snapshot_reference": _policy_snapshot_reference,  # a KL penalty is refused
        "place_reference": _policy_place_reference,  # the reference stays where it is
        "noise_grid": _policy_noise_grid,  # exploration noise tiles the latent itself ...
        "to_noise_grid": _identity,  # ... so latents need no conversion to that grid
        "from_noise_grid": _identity,
    },
    "backend": {
        "memory": _backend_memory,  # nothing reported
        "place_frozen": _backend_place_frozen,  # a frozen module stays as the policy made it
        "runtime": _backend_runtime,  # the device only
    },
    "reward": {
        "fps": None,  # a reward that does not look at frame rates
    },
    "advantage": {
        "uses_all_ranks": False,  # called as estimator(rollout, rewards), on this rank's trees alone
    },
    "pruner": {
        "check_plan": _pruner_check_plan,  # accepts every tree
    },
}


def complete(component: Any, kind: str) -> Any:
    """Give `component` the default of every optional member of its `kind` it lacks; returns it."""
    for name, default in DEFAULTS[kind].items():
        if not hasattr(component, name):
            value = types.MethodType(default, component) if isinstance(default, types.FunctionType) else default
            setattr(component, name, value)
    return component


def planned_noise_grid(model_factory: Any, options: dict[str, Any]) -> tuple[int, ...] | None:
    """The grid a model's exploration noise tiles, known before its weights are read: from the
    factory's optional ``noise_grid_for(options)`` (None: not known without loading)."""
    plan = getattr(model_factory, "noise_grid_for", None)
    shape = plan(options) if plan is not None else None
    return tuple(shape) if shape is not None else None
