"""`grpo run --nproc N`: N local ranks of one run, stopped together when any of them fails.

Each rank is the same `grpo run` command in its own process, with the process-group variables
torchrun would set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
Rank 0 draws the progress bar; every rank's errors reach the terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from grpo.core.dist import free_port

from .common import err_console

GRACE_SECONDS = 10.0


def launched_rank() -> int | None:
    """This process's rank when a launcher started it, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"])
    return None


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(args: list[str], nproc: int) -> int:
    """Run ``grpo <args>`` as `nproc` ranks; returns the exit code (the first failing rank's)."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N ranks on shared cores
        env.setdefault("PYTHONFAULTHANDLER", "1")  # a rank killed by a fault (abort, segfault) prints its stacks
        argv = [sys.executable, "-m", "grpo.cli.main", *args, *([] if rank == 0 else ["--quiet"])]
        procs.append(subprocess.Popen(argv, env=env, stdout=None if rank == 0 else subprocess.DEVNULL))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                _stop(procs)
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                err_console.print(f"[bold red]rank {rank} ended with {how}[/]: stopped the other ranks")
                return code if code > 0 else 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs)
        return 130
