"""The Backend protocol: owns the optimizer, gradients, checkpoints and process group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings (``[train]`` keys ``lr``, ``weight_decay``, ``betas``, ``eps``, ``grad_clip``)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    grad_clip: float


@runtime_checkable
class Backend(Protocol):
    """Training backend. The engine calls, per optimizer step: ``backward`` once per micro-batch,
    then ``step``.

    Attributes:
        rank, world_size: this process's place in the process group.
        device: where the trained module lives.

    ``memory``, ``place_frozen``, ``weights_finite`` and ``runtime`` are optional; their defaults
    (``grpo.core.abilities``) report nothing, leave a frozen module as it is, check the parameters as
    the model holds them, and name the device.
    """

    rank: int
    world_size: int
    device: torch.device

    def setup(self, module: torch.nn.Module, parameters: list[torch.nn.Parameter], optim: OptimizerConfig) -> None:
        """Wrap `module` for training `parameters` with AdamW."""
        ...

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        """Accumulate gradients of a micro-batch's (already normalised) loss; `boundary` is True for
        the last micro-batch before ``step``."""
        ...

    def step(self) -> float:
        """Clip, take one optimizer step, zero the gradients; returns the pre-clip gradient norm.

        A non-finite norm skips the step (the gradients are dropped) and is returned as is."""
        ...

    def save(self, directory: Path) -> None:
        """Write trained weights and optimizer state into `directory` (which exists)."""
        ...

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote."""
        ...

    def close(self) -> None:
        """Release the process group and other resources."""
        ...

    def memory(self) -> dict[str, int]:
        """Bytes this rank holds, by kind (parameters, gradients, optimizer state, ...); logged as
        ``memory/<kind>`` in MiB every iteration."""
        ...

    def place_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen module (the KL reference) placed beside the trained one (ZeRO-3: partitioned)."""
        ...

    def weights_finite(self, parameters: list[torch.nn.Parameter]) -> bool:
        """Whether every trained weight is finite, the same answer on every rank (checked after each
        iteration's update: a run whose weights turn inf or nan stops before it checkpoints them)."""
        ...

    def runtime(self) -> dict[str, str]:
        """Where training runs (device, accelerator, process-group backend), for ``runtime.json``."""
        ...
