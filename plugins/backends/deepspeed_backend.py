"""DeepSpeed ZeRO backend (one process here; multi-process launch comes with the launcher).

On a CPU it uses DeepSpeed's CPU accelerator with the gloo backend and a client AdamW, so that
no C++ op is compiled. Gradient accumulation boundaries are set by the engine's update loop.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Literal

import torch

from grpo.core.backend import OptimizerConfig
from grpo.core.schema import Doc, Range

from .plain import resolve_device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeepSpeedBackend:
    """DeepSpeed ZeRO stages 0-2 with fp32 weights (bf16 when asked), gloo on CPU, NCCL on GPU."""

    def __init__(
        self,
        *,
        zero_stage: Annotated[int, Range(ge=0, le=2), Doc("ZeRO stage (3 comes with multi-process)")] = 2,
        precision: Literal["fp32", "bf16"] = "fp32",
        device: Literal["auto", "cpu", "cuda"] = "auto",
    ) -> None:
        self.zero_stage, self.precision = zero_stage, precision
        self.device = resolve_device(device)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.engine = None

    def _init_distributed(self) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if self.device.type == "cpu" else "cuda")
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        import deepspeed

        comm_torch = sys.modules.get("deepspeed.comm.torch")
        if comm_torch is not None and self.device.type == "cpu":
            # The shared-memory collective op would be JIT-compiled (minutes); gloo needs none.
            comm_torch.build_shm_op = lambda: None
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed("gloo" if self.device.type == "cpu" else "nccl")

    def setup(self, module: torch.nn.Module, parameters: list[torch.nn.Parameter], optim: OptimizerConfig) -> None:
        self._init_distributed()
        import deepspeed

        self.parameters = parameters
        self.names = {id(p): n for n, p in module.named_parameters()}
        optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps
        )
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module.to(self.device), optimizer=optimizer, config=config
        )

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss)

    def step(self) -> float:
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="backend")

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag="backend")

    def close(self) -> None:
        pass
