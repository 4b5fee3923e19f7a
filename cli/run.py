"""`grpo run RECIPE` and `grpo run --resume DIR`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from grpo.core.components import build_parts
from grpo.core.engine import Trainer, check_world
from grpo.core.errors import UserError
from grpo.core.rundir import RESOLVED

from .common import console, guard, load_recipe
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
    import os

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
        run_dir = resume
    else:
        if recipe is None:
            raise UserError("no recipe given", hint="grpo run recipes/shapes_dance.toml")
        r, _ = load_recipe(recipe, set_, env=True)
        run_dir = out or Path("runs") / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not rank and run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run directory {str(run_dir)!r} already exists and is not empty", where="--out",
                            hint=f"continue it with `grpo run --resume {run_dir}`, or choose another --out")
    if nproc > 1:
        check_ranks(r, nproc)
        head = ["run", "--resume", str(run_dir)] if resume is not None else ["run", str(recipe), "--out", str(run_dir)]
        sets = [a for kv in set_ for a in ("--set", kv)]
        raise SystemExit(launch([*head, *sets, *(["--quiet"] if quiet else [])], nproc))
    trainer = Trainer(r, run_dir)
    keys = [x.label for x in r.rewards]
    if quiet or not r.logging.progress:
        trainer.run(resume=resume is not None)
    else:
        with RichReporter(keys) as reporter:
            trainer.reporter = reporter
            trainer.run(resume=resume is not None)
    if not rank:
        console.print(f"[green]done[/]: {run_dir}")
