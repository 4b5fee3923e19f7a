"""Atomic checkpoints: written to a temporary folder, then renamed into place.

Resuming takes the newest checkpoint that is complete (``usable``): a folder damaged after it was
written (a truncated file, an empty one, a broken ``engine.json``) is named in a warning, moved
aside as ``damaged-iter_NNNNNN`` and the next older one is tried; that is what
``train.keep_checkpoints = 2`` keeps them for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .backend import Backend
from .dist import Group
from .errors import UserError
from .integrity import damage, no_space
from .rundir import CHECKPOINTS

PREFIX = "iter_"
DAMAGED = "damaged-"
RECIPE = "recipe.json"  # the settings the checkpoint's iterations were trained with
log = logging.getLogger(__name__)


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
    try:
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
    except (OSError, RuntimeError) as e:
        full = no_space(e, run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        if not full:
            raise
        raise out_of_space(run_dir, f"the checkpoint after iteration {iteration}") from None
    if group.main:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    group.barrier()
    return final


def out_of_space(run_dir: Path, what: str) -> UserError:
    """The error of a write into `run_dir` that failed for lack of space: what was being written, the
    checkpoint that is still intact, and how to go on."""
    before = latest(run_dir)
    kept = f"the checkpoint after iteration {before[1]} is intact" if before else "no checkpoint was written yet"
    return UserError(f"no space left on device while writing {what}", where=str(run_dir),
                     hint=f"{kept}; free some space, then continue with `grpo run --resume {run_dir}`")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "engine.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(run_dir: Path) -> tuple[Path, int] | None:
    """The newest finished checkpoint and its iteration, as its folder name says (not checked)."""
    done = complete_checkpoints(run_dir)
    if not done:
        return None
    return done[-1], int(done[-1].name[len(PREFIX):])


def usable(run_dir: Path) -> tuple[tuple[Path, int] | None, list[Path]]:
    """The newest checkpoint whose files are all complete with its iteration (None when the run has no
    finished checkpoint), and the newer damaged ones, each named in a warning (move them out of the way
    with `set_aside` once every rank has chosen). When every checkpoint is damaged: a UserError naming
    the newest one's damaged file."""
    done, damaged = complete_checkpoints(run_dir), []
    first: tuple[Path, str] | None = None
    for folder in reversed(done):
        problems = damage(folder)
        if not problems:
            return (folder, int(engine_state(folder)["iteration"])), damaged
        path, problem = problems[0]
        first = first or (path, problem)
        damaged.append(folder)
        log.warning("checkpoint %s is damaged (%s %s)%s; trying the one before it", folder.name, path, problem,
                    f", and {len(problems) - 1} more file(s)" if len(problems) > 1 else "")
    if first is not None:
        raise UserError(f"no complete checkpoint to resume from: {first[0]} {first[1]}", where=str(run_dir),
                        hint="restore the file from a copy, or start the run again with `grpo run RECIPE --out NEW_DIR`")
    return None, []


def set_aside(folders: list[Path]) -> None:
    """Rename damaged checkpoints ``damaged-iter_N``: kept for inspection, never counted or loaded again."""
    for folder in folders:
        target = folder.with_name(DAMAGED + folder.name)
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)


def engine_state(checkpoint: Path) -> dict:
    """What the engine stored with a checkpoint: ``iteration`` and any extra values."""
    with (checkpoint / "engine.json").open() as fh:
        return json.load(fh)
