"""The plain PyTorch backend: one process, AdamW, gradient-norm clipping."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from grpo.core.backend import OptimizerConfig


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchBackend:
    """Plain PyTorch in one process (CPU or one GPU)."""

    rank = 0
    world_size = 1

    def __init__(self, *, device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        self.device = resolve_device(device)
        self.module: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, module: torch.nn.Module, parameters: list[torch.nn.Parameter], optim: OptimizerConfig) -> None:
        self.module = module.to(self.device)
        self.parameters = parameters
        self.names = {id(p): n for n, p in module.named_parameters()}
        self.optim = optim
        self.optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps
        )

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        loss.backward()

    def step(self) -> float:
        assert self.optimizer is not None
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.optim.grad_clip)
        if torch.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {self.names[id(p)]: p.detach().cpu().contiguous() for p in self.parameters}

    def save(self, directory: Path) -> None:
        assert self.optimizer is not None
        save_file(self.trained_state(), str(directory / "trained.safetensors"))
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")

    def read_trained(self, directory: Path) -> dict[str, torch.Tensor]:
        """The trained weights, by parameter name, from a checkpoint folder (no setup needed)."""
        return load_file(str(directory / "trained.safetensors"))

    def load(self, directory: Path) -> None:
        assert self.module is not None and self.optimizer is not None
        state = load_file(str(directory / "trained.safetensors"))
        by_name = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                by_name[name].copy_(value)
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=self.device))

    def close(self) -> None:
        pass
