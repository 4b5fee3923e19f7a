"""Atomic checkpoints: written to a temporary folder, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .backend import Backend
from .dist import Group
from .rundir import CHECKPOINTS

PREFIX = "iter_"


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINTS / f"{PREFIX}{iteration:06d}"


def save(run_dir: Path, backend: Backend, iteration: int, keep: int, extra: dict | None = None,
         group: Group | None = None, also: Callable[[Path], None] | None = None) -> Path:
    """Save the state after `iteration` iterations (the next one to run is `iteration`).

    `extra` (JSON values) is kept beside the iteration in ``engine.json``; read it with `engine_state`.
    `also` writes more files into the folder (rank 0 only: state every rank holds alike).
    With several ranks every rank calls this: each writes its shard into the temporary folder, and
    rank 0 writes ``engine.json`` and renames the folder once all have finished.
    """
    group = group or Group()
    final = checkpoint_dir(run_dir, iteration)
    tmp = final.with_name(f".tmp-{final.name}")
    if group.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    group.barrier()
    backend.save(tmp)
    group.barrier()
    if group.main:
        if also is not None:
            also(tmp)
        with (tmp / "engine.json").open("w") as fh:
            json.dump({**(extra or {}), "iteration": iteration, "world_size": group.size}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    group.barrier()
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "engine.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(run_dir: Path) -> tuple[Path, int] | None:
    done = complete_checkpoints(run_dir)
    if not done:
        return None
    with (done[-1] / "engine.json").open() as fh:
        return done[-1], int(json.load(fh)["iteration"])


def engine_state(checkpoint: Path) -> dict:
    """What the engine stored with a checkpoint: ``iteration`` and any extra values."""
    with (checkpoint / "engine.json").open() as fh:
        return json.load(fh)
