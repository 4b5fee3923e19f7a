"""Copies of the trained weights kept beside them: the EMA that evaluation and export use
(``[train] ema_decay``, ``ema_every``, ``ema_warmup``), and the lagged copy an objective asks for
(``Objective.lag``: DiffusionNFT's old policy).

Both are fp32 shadows of the trained parameters, moved towards the weights as
``copy ← d·copy + (1 − d)·θ`` and swapped into the module for the duration of ``applied()``.

- The EMA: every `every` optimizer steps, with d = `decay`, or with the warm-up
  d = min((1 + s)/(10 + s), decay) at optimizer step s (DiffusionNFT's and Flow-GRPO's released EMA).
  Schedule ``plain`` blends once after steps `every`, 2·`every`, …; schedule ``flow-grpo`` is the
  released Flow-GRPO loop's, which steps its EMA once per sample batch of an accumulated optimizer
  step with the count s of steps taken so far and blends where s + 1 is a multiple of `every`: after
  steps `every` − 1, 2·`every` − 1, …, `repeats` times with the same weights (its gradient
  accumulation), once at the step and `repeats` − 1 times before the next optimizer step.
- The lagged copy: after every iteration (or every optimizer step), with d from its ``Lag`` schedule
  at the optimizer steps taken so far. The rollout samples from it when the lag says so.

A checkpoint holds both (``ema.safetensors``, ``lagged.safetensors``), so a resumed run continues them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ema_repeats_problem
from .errors import UserError
from .objective import Lag

FILE = "ema.safetensors"
LAGGED_FILE = "lagged.safetensors"
STEPS = "__optimizer_steps__"
PENDING = "__pending_blends__"


class ShadowWeights:
    """An fp32 copy of `parameters` (named by `names`, as the module names them), saved as `file`."""

    file = FILE

    def __init__(self, parameters: list[torch.nn.Parameter], names: list[str]) -> None:
        self.parameters, self.names = parameters, names
        self.shadow = [p.detach().float().clone() for p in parameters]
        self.steps = 0  # optimizer steps seen

    @torch.no_grad()
    def blend(self, decay: float) -> None:
        """``copy ← decay·copy + (1 − decay)·θ``."""
        for s, p in zip(self.shadow, self.parameters, strict=True):
            s.mul_(decay).add_(p.detach().float(), alpha=1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The copy in the module for the duration (the trained weights restored after). Enter it
        before any forward whose graph is still needed: swapping changes the parameters in place."""
        kept = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.parameters, strict=True):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in zip(kept, self.parameters, strict=True):
                    p.copy_(k)

    def counters(self) -> dict[str, int]:
        """The counts saved beside the weights (restored by `load`)."""
        return {STEPS: self.steps}

    def save(self, directory: Path) -> None:
        state = {n: s.cpu().contiguous() for n, s in zip(self.names, self.shadow, strict=True)}
        counts = {k: torch.tensor([v]) for k, v in self.counters().items()}
        save_file({**state, **counts}, str(directory / self.file))

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote; a checkpoint written without this copy starts it from the weights."""
        if not (directory / self.file).is_file():
            return
        state = read(directory, self.file)
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow, strict=True):
                s.copy_(state[n])
        saved = load_file(str(directory / self.file))
        self.steps = int(saved[STEPS])
        self.restore_counters(saved)

    def restore_counters(self, saved: dict[str, torch.Tensor]) -> None:
        return None

    def before_step(self) -> None:
        return None


class WeightAverage(ShadowWeights):
    """The EMA: every `every` optimizer steps, blended with `decay` (or its warm-up) on `schedule`."""

    def __init__(self, parameters: list[torch.nn.Parameter], names: list[str], decay: float, every: int,
                 warmup: bool = False, schedule: str = "plain", repeats: int = 1) -> None:
        super().__init__(parameters, names)
        self.decay, self.every, self.warmup = decay, every, warmup
        self.schedule, self.repeats = schedule, repeats
        self.pending = 0  # blends owed to the current weights before the next optimizer step

    def current_decay(self) -> float:
        """The decay of the blend after optimizer step `steps` (1-based)."""
        return min((1 + self.steps) / (10 + self.steps), self.decay) if self.warmup else self.decay

    def due(self) -> bool:
        """Whether the step just counted blends: s a multiple of `every` (plain) or s + 1 (flow-grpo)."""
        return (self.steps + (self.schedule == "flow-grpo")) % self.every == 0

    def after_step(self) -> None:
        """Count an optimizer step; when it is due, move the average towards the weights."""
        self.steps += 1
        if self.due():
            self.blend(self.current_decay())
            self.pending = self.repeats - 1

    def before_step(self) -> None:
        """The blends the released loop makes during the next step's accumulation, with the weights
        still those of the last step."""
        for _ in range(self.pending):
            self.blend(self.current_decay())
        self.pending = 0

    def counters(self) -> dict[str, int]:
        return {STEPS: self.steps, PENDING: self.pending}

    def restore_counters(self, saved: dict[str, torch.Tensor]) -> None:
        self.pending = int(saved[PENDING]) if PENDING in saved else 0


class LaggedWeights(ShadowWeights):
    """The objective's lagged copy, blended on its ``Lag`` schedule."""

    file = LAGGED_FILE

    def __init__(self, parameters: list[torch.nn.Parameter], names: list[str], lag: Lag) -> None:
        super().__init__(parameters, names)
        self.lag = lag

    def after_step(self) -> None:
        self.steps += 1
        if self.lag.every == "optimizer_step":
            self.blend(self.lag.decay(self.steps))

    def after_iteration(self) -> None:
        if self.lag.every == "iteration":
            self.blend(self.lag.decay(self.steps))

    def sampling(self) -> AbstractContextManager[None]:
        """The weights the rollout samples with: this copy when the lag says so (from its
        ``rollout_after`` optimizer steps on), else the trained ones."""
        if self.lag.rollout and self.steps >= self.lag.rollout_after:
            return self.applied()
        return nullcontext()


class NoCopy:
    """What the engine holds for a copy the run does not keep: nothing moved, swapped or saved."""

    def before_step(self) -> None:
        return None

    def after_step(self) -> None:
        return None

    def after_iteration(self) -> None:
        return None

    def applied(self) -> AbstractContextManager[None]:
        return nullcontext()

    def sampling(self) -> AbstractContextManager[None]:
        return nullcontext()

    def save(self, directory: Path) -> None:
        return None

    def load(self, directory: Path) -> None:
        return None


def read(directory: Path, file: str = FILE) -> dict[str, torch.Tensor]:
    """The weights of one copy in a checkpoint folder (the EMA by default), by parameter name (empty
    when it has none)."""
    if not (directory / file).is_file():
        return {}
    return {k: v for k, v in load_file(str(directory / file)).items() if k not in (STEPS, PENDING)}


def _whole(parameters: list[torch.nn.Parameter], where: str) -> None:
    if any(p.numel() == 0 for p in parameters):
        raise UserError("the backend partitions the trained weights over the ranks (ZeRO-3), so no rank holds "
                        "them whole to keep a copy of", where=where,
                        hint="use ZeRO stage 0-2 (backend.zero_stage or a zero2 preset)")


def _names(module: torch.nn.Module, parameters: list[torch.nn.Parameter]) -> list[str]:
    names = {id(p): n for n, p in module.named_parameters()}
    return [names[id(p)] for p in parameters]


def weight_average(module: torch.nn.Module, parameters: list[torch.nn.Parameter], decay: float,
                   every: int, warmup: bool = False, schedule: str = "plain",
                   repeats: int = 1) -> WeightAverage | NoCopy:
    """The run's average of `parameters` of `module` (NoCopy for decay 0). UserError when the
    backend partitions the weights (ZeRO-3), whose ranks then hold no whole parameter to average,
    or for repeated blends on the plain schedule."""
    if not decay:
        return NoCopy()
    if (problem := ema_repeats_problem(decay, schedule, repeats)) is not None:
        raise problem
    _whole(parameters, "train.ema_decay")
    return WeightAverage(parameters, _names(module, parameters), decay, every, warmup, schedule, repeats)


def lagged_weights(module: torch.nn.Module, parameters: list[torch.nn.Parameter],
                   lag: Lag | None) -> LaggedWeights | NoCopy:
    """The objective's lagged copy of `parameters` (NoCopy when it keeps none); UserError on ZeRO-3."""
    if lag is None:
        return NoCopy()
    _whole(parameters, "strategy.objective")
    return LaggedWeights(parameters, _names(module, parameters), lag)


@dataclass
class WeightCopies:
    """The run's EMA and the objective's lagged copy, moved, saved and restored together."""

    ema: WeightAverage | NoCopy
    lagged: LaggedWeights | NoCopy

    def before_step(self) -> None:
        self.ema.before_step()

    def after_step(self) -> None:
        self.ema.after_step()
        self.lagged.after_step()

    def save(self, directory: Path) -> None:
        self.ema.save(directory)
        self.lagged.save(directory)

    def load(self, directory: Path) -> None:
        self.ema.load(directory)
        self.lagged.load(directory)
