"""An exponential moving average of the trained weights (``[train] ema_decay``, ``ema_every``).

Every `every` optimizer steps, ``ema ← decay·ema + (1 − decay)·θ`` for each trained parameter θ
(Flow-GRPO's EMA: decay 0.9 every 8 steps). Evaluation, its sample grids and ``grpo export`` use
the averaged weights; a checkpoint holds them (``ema.safetensors``), so a resumed run continues
the same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE = "ema.safetensors"
STEPS = "__optimizer_steps__"


class WeightAverage:
    """The EMA of `parameters` (named by `names`, as the module names them), kept in fp32 beside them."""

    def __init__(self, parameters: list[torch.nn.Parameter], names: list[str], decay: float, every: int) -> None:
        self.parameters, self.names, self.decay, self.every = parameters, names, decay, every
        self.shadow = [p.detach().float().clone() for p in parameters]
        self.steps = 0

    @torch.no_grad()
    def after_step(self) -> None:
        """Count an optimizer step; every `every` steps, move the average towards the weights."""
        self.steps += 1
        if self.steps % self.every:
            return
        for s, p in zip(self.shadow, self.parameters, strict=True):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the module for the duration (the trained ones restored after)."""
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

    def save(self, directory: Path) -> None:
        state = {n: s.cpu().contiguous() for n, s in zip(self.names, self.shadow, strict=True)}
        save_file({**state, STEPS: torch.tensor([self.steps])}, str(directory / FILE))

    def load(self, directory: Path) -> None:
        """Restore what `save` wrote; a checkpoint written without an average starts one from the weights."""
        if not (directory / FILE).is_file():
            return
        state = read(directory)
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow, strict=True):
                s.copy_(state[n])
        self.steps = int(load_file(str(directory / FILE))[STEPS])


def read(directory: Path) -> dict[str, torch.Tensor]:
    """The averaged weights of a checkpoint folder, by parameter name (empty when it has none)."""
    if not (directory / FILE).is_file():
        return {}
    return {k: v for k, v in load_file(str(directory / FILE)).items() if k != STEPS}


class NoAverage:
    """What the engine holds when ``train.ema_decay`` is 0: nothing averaged, nothing saved."""

    def after_step(self) -> None:
        return None

    @contextmanager
    def applied(self) -> Iterator[None]:
        yield

    def save(self, directory: Path) -> None:
        return None

    def load(self, directory: Path) -> None:
        return None


def weight_average(module: torch.nn.Module, parameters: list[torch.nn.Parameter], decay: float,
                   every: int) -> WeightAverage | NoAverage:
    """The run's average of `parameters` of `module` (NoAverage for decay 0). UserError when the
    backend partitions the weights (ZeRO-3), whose ranks then hold no whole parameter to average."""
    if not decay:
        return NoAverage()
    if any(p.numel() == 0 for p in parameters):
        from .errors import UserError

        raise UserError("the backend partitions the trained weights over the ranks (ZeRO-3), so no rank holds "
                        "them whole to average", where="train.ema_decay",
                        hint="use ZeRO stage 0-2 (backend.zero_stage or a zero2 preset) with an EMA, or set it to 0")
    names = {id(p): n for n, p in module.named_parameters()}
    return WeightAverage(parameters, [names[id(p)] for p in parameters], decay, every)
