"""The plain PyTorch backend: AdamW and gradient-norm clipping, in one process or data-parallel.

Started as several ranks (``grpo run --nproc N`` or torchrun), every rank holds the whole model and
optimizer; at each optimizer step the gradients are averaged over the ranks (one all-reduce), so
every rank takes the same step. Rank 0 alone writes checkpoints: the ranks' states are equal.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from grpo.core.backend import OptimizerConfig
from grpo.core.dist import free_port
from grpo.core.integrity import load_data
from grpo.core.schema import Doc, Range


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchBackend:
    """Plain PyTorch (CPU or GPUs): one process, or data-parallel ranks averaging gradients."""

    def __init__(
        self,
        *,
        device: Literal["auto", "cpu", "cuda"] = "auto",
        timeout: Annotated[float, Range(gt=0), Doc("minutes a collective waits for the other ranks")] = 10.0,
    ) -> None:
        self.device = resolve_device(device)
        self.timeout = timeout
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.module: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._gradient_bytes = 0
        self._owns_group = False

    def _init_distributed(self) -> None:
        if self.world_size == 1 or dist.is_initialized():
            return
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world_size, timeout=datetime.timedelta(minutes=self.timeout))
        self._owns_group = True

    def setup(self, module: torch.nn.Module, parameters: list[torch.nn.Parameter], optim: OptimizerConfig) -> None:
        self._init_distributed()
        self.module = module.to(self.device)
        if self.world_size > 1:  # the same starting weights on every rank, whatever initialised them
            with torch.no_grad():
                for p in parameters:
                    dist.broadcast(p.data, src=0)
        self.parameters = parameters
        self.names = {id(p): n for n, p in module.named_parameters()}
        self.optim = optim
        self.optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps
        )

    def runtime(self) -> dict[str, str]:
        """Where training runs: the device and the process group's backend (``none`` in one process)."""
        return {"device": str(self.device), "process_group": dist.get_backend() if dist.is_initialized() else "none"}

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        loss.backward()

    def memory(self) -> dict[str, int]:
        """Bytes this rank holds: every parameter of the module, the trained ones' gradients at the
        last optimizer step, and the optimizer's state (AdamW: two moments per trained weight)."""
        assert self.module is not None and self.optimizer is not None
        size = lambda t: t.numel() * t.element_size()  # noqa: E731
        state = sum(size(v) for s in self.optimizer.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.dim() > 0)
        return {"parameters": sum(size(p) for p in self.module.parameters()), "gradients": self._gradient_bytes,
                "optimizer_state": state}

    def step(self) -> float:
        assert self.optimizer is not None
        if self.world_size > 1:
            self._average_gradients()
        self._gradient_bytes = sum(p.grad.numel() * p.grad.element_size() for p in self.parameters if p.grad is not None)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.optim.grad_clip)
        if torch.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _average_gradients(self) -> None:
        """Every rank's gradients averaged, in one all-reduce of a flat buffer."""
        for p in self.parameters:
            if p.grad is None:  # a rank whose micro-batches never reached a parameter
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {self.names[id(p)]: p.detach().cpu().contiguous() for p in self.parameters}

    def save(self, directory: Path) -> None:
        """Rank 0 writes the weights and optimizer state (every rank holds the same)."""
        assert self.optimizer is not None
        if self.rank != 0:
            return
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
        self.optimizer.load_state_dict(load_data(directory / "optimizer.pt", map_location=self.device))

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False
