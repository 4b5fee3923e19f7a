"""`grpo run RECIPE` and `grpo run --resume DIR`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from grpo.core import checkpoint
from grpo.core.components import build_parts
from grpo.core.engine import Trainer, check_world
from grpo.core.errors import UserError
from grpo.core.integrity import no_space
from grpo.core.recipe import check_resume_changes
from grpo.core.rundir import LOCK, RESOLVED, RunLock

from .common import console, err_console, guard, load_recipe
from .launch import launch, launched_rank
from .progress import RichReporter


def _quiet_libraries() -> None:
    """Our progress bar is the one to watch: silence the libraries' weight-loading bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def check_ranks(recipe, nproc: int) -> None:
    """Refuse, before any rank starts, a recipe whose parts do not fit together or that cannot run on
    `nproc` ranks."""
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    os.environ.update(RANK="0", WORLD_SIZE=str(nproc))
    try:
        ranks = build_parts(recipe).backend.world_size
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    check_world(recipe, nproc, ranks)


@guard
def run(
    recipe: Annotated[str | None, typer.Argument(help="path of a .toml recipe")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override KEY=VALUE (TOML value)")] = [],  # noqa: B006
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<recipe>-<time>)")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in this directory")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="local processes (ranks): data-parallel with "
                                                            "the torch backend, ZeRO with deepspeed")] = 1,
) -> None:
    """Train: rollout trees, score leaves, compute advantages, prune, update; log and checkpoint."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    rank = launched_rank()
    if rank is not None and nproc > 1:
        raise UserError("--nproc given to a process that a launcher already started", where="--nproc",
                        hint="let either `grpo run --nproc N` or torchrun / deepspeed start the ranks")
    if rank:
        quiet = True
    if resume is not None:
        if recipe is not None or out is not None:
            raise UserError("--resume DIR takes no RECIPE or --out", hint="grpo run --resume runs/my-run")
        resolved = resume / RESOLVED
        if not resolved.is_file():
            raise UserError(f"{str(resume)!r} is not a run directory (no {RESOLVED})", where="--resume",
                            hint="give the --out directory of an earlier `grpo run`")
        r, _ = load_recipe(resolved, set_, env=True, resolved=True)
        if set_:
            stored, _ = load_recipe(resolved, [], env=True, resolved=True)
            check_resume_changes(stored.to_dict(), r.to_dict(), where="--set", what="the override")
        run_dir = resume
    else:
        if recipe is None:
            raise UserError("no recipe given", hint="grpo run recipes/shapes_dance.toml")
        r, _ = load_recipe(recipe, set_, env=True)
        run_dir = out or Path("runs") / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not rank:
            _check_new_run_dir(run_dir)
    if nproc > 1:
        check_ranks(r, nproc)
        head = ["run", "--resume", str(run_dir)] if resume is not None else ["run", str(recipe), "--out", str(run_dir)]
        sets = [a for kv in set_ for a in ("--set", kv)]
        raise SystemExit(launch([*head, *sets, *(["--quiet"] if quiet else [])], nproc))
    where = "--resume" if resume is not None else "--out"
    created = not run_dir.exists()
    lock = _open_run_dir(run_dir, where) if not rank else None  # rank 0 writes the run directory
    try:
        with _interrupts_say_how_to_go_on(run_dir, rank):
            trainer = Trainer(r, run_dir)
            keys = [x.label for x in r.rewards]
            if quiet or not r.logging.progress:
                trainer.run(resume=resume is not None)
            else:
                with RichReporter(keys) as reporter:
                    trainer.reporter = reporter
                    trainer.run(resume=resume is not None)
    except BaseException as e:
        if lock is not None and created:
            _remove_if_untouched(run_dir)
        if lock is not None and isinstance(e, (OSError, RuntimeError)) and no_space(e, run_dir):
            raise checkpoint.out_of_space(run_dir, "the run") from None
        raise
    finally:
        if lock is not None:
            lock.release()
    if not rank:
        console.print(f"[green]done[/]: {run_dir}")


def _check_new_run_dir(run_dir: Path) -> None:
    """A new run's directory must be a folder that is empty or not there yet."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{str(run_dir)!r} is a file, not a folder", where="--out",
                        hint="give a new folder for the run, e.g. --out runs/my-run")
    if run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise UserError(f"run directory {str(run_dir)!r} already exists and is not empty", where="--out",
                        hint=f"continue it with `grpo run --resume {run_dir}`, or choose another --out")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{str(run_dir)!r} lies under {str(parent)!r}, which is a file", where="--out",
                                hint="give a folder path for the run, e.g. --out runs/my-run")
            break


def _open_run_dir(run_dir: Path, where: str) -> RunLock:
    """Create the run directory if needed and lock it for this process; a place that cannot be written
    is said so here, before anything heavy is built."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire(where)
        try:  # a run directory whose files can be changed but that takes no new one fails at its first checkpoint
            probe = run_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            lock.release()
            raise
        return lock
    except OSError as e:
        raise UserError(f"cannot write the run directory {str(run_dir)!r}: {e.strerror or e}", where=where,
                        hint="choose a folder you can write (--out), or make this one writable") from None


def _remove_if_untouched(run_dir: Path) -> None:
    """A new run that failed before writing anything leaves nothing behind."""
    try:
        if all(p.name == LOCK for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
    except OSError:
        pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the run stops as it does on Ctrl-C."""


@contextmanager
def _interrupts_say_how_to_go_on(run_dir: Path, rank: int | None):
    """Ctrl-C or SIGTERM: the run stops (files already written stay as they are) and rank 0 says where
    it can continue from, with the command."""
    def terminate(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt as e:
        if not rank:
            found = checkpoint.latest(run_dir)
            kept = (f"the last checkpoint is after iteration {found[1]}" if found
                    else "no checkpoint was written yet (resuming starts again from iteration 0)")
            what = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
            err_console.print(f"[yellow]{what}[/]: {kept}; continue with: grpo run --resume {run_dir}")
        raise SystemExit(143 if isinstance(e, _Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
