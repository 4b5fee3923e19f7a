"""The σ grid a diffusers pipeline samples on by default, computed from its scheduler's config.

Every grid here has the form σ_k = s·u_k / (1 + (s − 1)·u_k) (the shift map of
``grpo.core.sampler.shifted_sigmas``) over unshifted times u_0 … u_T ending at 0; the pipelines
differ in the times and the shift s:

- ``FlowMatchEulerDiscreteScheduler.set_timesteps(T)`` (SD3, and Wan with that scheduler): u spaced
  evenly from 1 to the scheduler's smallest training level, shift(1/N) with a static shift (1/N with
  dynamic shifting), N = ``num_train_timesteps``; SD3.5 at shift 3 and T = 10: 1.0, 0.9601, …, 0.278,
  0.0089, 0.
- FLUX's pipeline passes ``sigmas = linspace(1, 1/T, T)`` and ``mu`` from the image's token count
  (``calculate_shift``): u = 1, …, 1/T, and with dynamic shifting s = e^mu (``time_shift_type``
  "exponential") or s = mu ("linear").
- ``UniPCMultistepScheduler`` with ``use_flow_sigmas`` (Wan's pipeline): u = linspace(1, 1/N, T + 1)
  without its last point, then 0, s = ``flow_shift``, the first σ lowered from 1 to 1 − 1e-6.
- ``DPMSolverMultistepScheduler`` with ``use_flow_sigmas`` (DGPO's DPM-Solver++): u_k = (1 − 1/N)·(1 − k/T),
  s = ``flow_shift``; offered for any model as ``sigma_grid = "flow-sigmas"`` (`dpm_flow_times`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from grpo.core.errors import UserError

Times = Callable[[int], list[float]]
UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal", "invert_sigmas")
HINT = "set model.sigma_grid = \"shifted\" (the sampler's own shifted grid)"


def _linspace(start: float, stop: float, n: int) -> list[float]:
    return [start] if n == 1 else [start + (stop - start) * k / (n - 1) for k in range(n)]


def shift_map(u: float, shift: float) -> float:
    return shift * u / (1.0 + (shift - 1.0) * u)


def calculate_shift(image_seq_len: int, config: Mapping[str, Any], max_shift: float) -> float:
    """mu for dynamic shifting, linear in the image's token count between the config's base and
    max lengths (the pipelines' ``calculate_shift``)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, top = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    m = (top - base_shift) / (max_len - base_len)
    return image_seq_len * m + base_shift - m * base_len


def _dynamic_shift(config: Mapping[str, Any], mu: float) -> float:
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu


def dpm_flow_times(num_train_timesteps: int = 1000) -> Times:
    """The times of ``DPMSolverMultistepScheduler``'s ``use_flow_sigmas`` grid: (1 − 1/N)·(1 − k/T)."""
    top = 1.0 - 1.0 / num_train_timesteps
    return lambda steps: [top * (1.0 - k / steps) for k in range(steps + 1)]


def unipc_flow_times(num_train_timesteps: int, shift: float) -> Times:
    """The times of ``UniPCMultistepScheduler``'s ``use_flow_sigmas`` grid: linspace(1, 1/N, T + 1) without
    its last point, then 0; the first time is the one whose shifted σ is 1 − 1e-6, as the scheduler
    lowers a first σ of 1."""
    below_one = 1.0 - 1e-6
    first = below_one / (shift - (shift - 1.0) * below_one)  # the inverse of the shift map

    def times(steps: int) -> list[float]:
        u = _linspace(1.0, 1.0 / num_train_timesteps, steps + 1)[:-1]
        return [first, *u[1:], 0.0]

    return times


def _refuse(config: Mapping[str, Any], scheduler: str) -> None:
    used = [k for k in UNSUPPORTED if config.get(k)]
    if used:
        raise UserError(f"the model's scheduler ({scheduler}) sets {', '.join(used)}, a σ grid this project does not "
                        "reproduce", where="model.sigma_grid", hint=HINT)


def _euler(pipeline: str, config: Mapping[str, Any], image_seq_len: int) -> tuple[Times, float]:
    n = int(config.get("num_train_timesteps", 1000))
    dynamic, static = bool(config.get("use_dynamic_shifting", False)), float(config.get("shift", 1.0))
    flux = pipeline == "FluxPipeline"
    if dynamic and pipeline not in ("FluxPipeline", "StableDiffusion3Pipeline"):
        raise UserError(f"{pipeline} does not pass the dynamic shift its scheduler asks for", where="model.sigma_grid",
                        hint=HINT)
    shift = _dynamic_shift(config, calculate_shift(image_seq_len, config, 1.15 if flux else 1.16)) if dynamic else static
    if flux and not config.get("use_flow_sigmas"):  # the pipeline passes its own σ: linspace(1, 1/T, T)
        return lambda steps: _linspace(1.0, 1.0 / steps, steps) + [0.0], shift
    lowest = 1.0 / n if dynamic else shift_map(1.0 / n, static)  # the scheduler's smallest training level
    return lambda steps: _linspace(1.0, lowest, steps) + [0.0], shift


def _flow_sigmas(config: Mapping[str, Any], scheduler: str, image_seq_len: int) -> tuple[Times, float]:
    if not config.get("use_flow_sigmas"):
        raise UserError(f"the model's scheduler ({scheduler}) does not use flow sigmas", where="model.sigma_grid",
                        hint=HINT)
    if config.get("final_sigmas_type", "zero") != "zero":
        raise UserError(f"the model's scheduler ({scheduler}) ends on σ_min, not 0", where="model.sigma_grid", hint=HINT)
    n = int(config.get("num_train_timesteps", 1000))
    if scheduler == "DPMSolverMultistepScheduler":
        return dpm_flow_times(n), float(config.get("flow_shift", 1.0))
    if config.get("use_dynamic_shifting"):
        shift = _dynamic_shift(config, calculate_shift(image_seq_len, config, 1.15))
    else:
        shift = float(config.get("flow_shift", 1.0))
    return unipc_flow_times(n, shift), shift


def pipeline_grid(pipeline: str, scheduler: str, config: Mapping[str, Any],
                  image_seq_len: int) -> tuple[Times, float]:
    """(the times of a T-step grid, the shift) the `pipeline` samples on with its `scheduler` (a class
    name) of `config`, for an image of `image_seq_len` transformer tokens; UserError for a scheduler
    or an option whose grid is not of this form."""
    _refuse(config, scheduler)
    if scheduler == "FlowMatchEulerDiscreteScheduler":
        return _euler(pipeline, config, image_seq_len)
    if scheduler in ("UniPCMultistepScheduler", "DPMSolverMultistepScheduler"):
        return _flow_sigmas(config, scheduler, image_seq_len)
    raise UserError(f"the model's scheduler {scheduler} has no σ grid this project knows", where="model.sigma_grid",
                    hint=HINT)


def model_schedule(choice: str, pipeline: str, scheduler: str, config: Mapping[str, Any],
                   image_seq_len: int) -> tuple[Times, float | None] | None:
    """What a model's ``sigma_schedule()`` returns for ``model.sigma_grid = choice``: None for the
    sampler's own grid ("shifted"), DPM-Solver++'s flow-sigmas times under the sampler's shift
    ("flow-sigmas"), or the pipeline's grid ("pipeline")."""
    if choice == "shifted":
        return None
    if choice == "flow-sigmas":
        return dpm_flow_times(int(config.get("num_train_timesteps", 1000))), None
    return pipeline_grid(pipeline, scheduler, config, image_seq_len)
