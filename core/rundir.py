"""The layout of a run directory: every file a run writes, named in one place.

::

    RUN/
      recipe.resolved.toml     the recipe with every default filled in, and the parts that ran
      runtime.json             torch build, device, backend (accelerator, process group), the CPU
      metrics.jsonl            one record per training iteration, evaluation and plan
      prompts.jsonl            the training prompts of every iteration
      finished.json            written when the run ended normally
      checkpoints/iter_NNNNNN/ trained weights, optimizer state, engine state
      eval/iter_NNNNNN.pt      per-image evaluation scores
      eval/fingerprint.json    hash of each evaluation set's prompts and noise
      samples/eval_NNNNNN.png  the evaluation grid (``.gif`` as well for videos)
      tensorboard/             TensorBoard events
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

log = logging.getLogger(__name__)

RESOLVED = "recipe.resolved.toml"
RUNTIME = "runtime.json"
METRICS = "metrics.jsonl"
PROMPTS = "prompts.jsonl"
FINISHED = "finished.json"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
FINGERPRINT = "fingerprint.json"
SAMPLES = "samples"
TENSORBOARD = "tensorboard"
WANDB_ID = "wandb-run.json"  # the Weights & Biases run this run logs to, kept for --resume


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def resolved(self) -> Path:
        return self.root / RESOLVED

    @property
    def runtime(self) -> Path:
        return self.root / RUNTIME

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def prompts(self) -> Path:
        return self.root / PROMPTS

    @property
    def finished(self) -> Path:
        return self.root / FINISHED

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def fingerprint(self) -> Path:
        return self.root / EVAL / FINGERPRINT

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def evaluated_iterations(self) -> list[int]:
        """Iterations with saved evaluation scores, in order."""
        return sorted(int(p.stem.split("_")[1]) for p in (self.root / EVAL).glob("iter_*.pt"))

    def eval_scores(self, iteration: int) -> Path:
        return self.root / EVAL / f"iter_{iteration:06d}.pt"

    def sample_grid(self, iteration: int, suffix: str = ".png") -> Path:
        return self.root / SAMPLES / f"eval_{iteration:06d}{suffix}"


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def write_runtime(path: Path, ranks: int, backend: dict[str, str]) -> None:
    """``runtime.json``: the torch build, the GPU, TF32, where the backend says training runs, and the
    CPU (model, logical cores, torch threads per rank), so that a report can name the machine."""
    cuda = torch.cuda.is_available()
    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "gpu": torch.cuda.get_device_name() if cuda else "none", "ranks": ranks,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "backend": backend, "cpu": cpu_name(), "cpu_cores": os.cpu_count() or 0,
            "threads": torch.get_num_threads()}
    path.write_text(json.dumps(info, indent=1) + "\n")
    log.info("runtime: %s", json.dumps(info))


def describe_machine(info: dict) -> str | None:
    """One line naming the machine of a ``runtime.json``; None for a run that did not record its CPU."""
    if "cpu" not in info:
        return None
    ranks = int(info.get("ranks", 1))
    cpu = f"{info['cpu']} ({info.get('cpu_cores', '?')} logical cores)"
    threads = f"{info.get('threads', '?')} thread{'' if info.get('threads') == 1 else 's'} per rank"
    where = f"{info['gpu']}, {cpu}" if info.get("gpu", "none") != "none" else cpu
    return f"{where}, {ranks} rank{'' if ranks == 1 else 's'}, {threads}"


LOCK = ".lock"  # held (flock) by the one process writing the run directory; holds its PID


class RunLock:
    """An exclusive lock on a run directory for the life of the process that writes it, so that a second
    `grpo run` (a `--resume` of the same directory, or a rerun of a comparison whose first run still
    goes on) cannot interleave its records with the first's. The lock is the kernel's (``flock``): it
    ends with the process, however the process ends."""

    def __init__(self, root: Path) -> None:
        self.root, self._fh = Path(root), None

    def acquire(self, where: str) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not a POSIX system: no lock
            return self
        fh = (self.root / LOCK).open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise UserError(f"run directory {str(self.root)!r} is being written by another grpo run (PID {holder})",
                            where=where, hint=f"one run directory takes one writer: wait until PID {holder} ends, "
                                              f"or stop it (`kill {holder}`) and then resume") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the lock
            self._fh = None
