"""The few collectives the engine needs, on torch.distributed (a no-op in a group of one).

The backend creates the process group; the engine only reads its rank and size. Tensors are
exchanged on the CPU under gloo and on the GPU under NCCL.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def bind_local_gpu() -> int | None:
    """Make this rank's GPU (``LOCAL_RANK``, as launchers set it) the current CUDA device, before any
    component is built: a model, text encoder, VAE or reward placed on ``"cuda"`` then lands on the
    rank's own GPU rather than every rank's on GPU 0. Returns the index, or None without a GPU."""
    if not torch.cuda.is_available():
        return None
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return index


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def main(self) -> bool:
        """Rank 0 writes logs, checkpoints' bookkeeping and pictures."""
        return self.rank == 0

    def _device(self) -> torch.device:
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `tensor` along dim 0, in rank order (sizes may differ)."""
        if not self.active:
            return tensor
        dev = self._device()
        local = tensor.detach().to(dev).contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], device=dev))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=dev)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)]).to(tensor.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (n must divide evenly)."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)
