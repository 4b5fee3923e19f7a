"""`grpo export RUN --out DIR`: a run's trained weights as a plain model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from grpo.core import checkpoint
from grpo.core.ema import read as read_average
from grpo.core.errors import UserError
from grpo.core.integrity import DamagedFile, damage
from grpo.core.rundir import RESOLVED

from .common import console, guard, load_recipe


def _iterations(folders: list[Path]) -> str:
    """The iterations of checkpoint folders, as a list to choose from."""
    return ", ".join(str(int(p.name[len(checkpoint.PREFIX):])) for p in folders)


@guard
def export(
    run: Annotated[Path, typer.Argument(help="a run directory")],
    out: Annotated[Path, typer.Option("--out", help="folder to write (must not exist or be empty)")],
    iteration: Annotated[int | None, typer.Option("--iteration", help="checkpoint to export (default the latest)")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="the EMA weights when the run kept them (train.ema_decay)")] = True,
) -> None:
    """Write the trained model of a run's checkpoint as a model folder (ZeRO shards gathered, LoRA merged;
    the EMA of the weights when the run kept one, unless --no-ema)."""
    from .run import _quiet_libraries

    _quiet_libraries()
    if not (run / RESOLVED).is_file():
        raise UserError(f"{str(run)!r} is not a run directory (no {RESOLVED})", where="RUN",
                        hint="give the --out directory of a `grpo run`")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} exists and is not empty", where="--out", hint="choose a new folder")
    done = checkpoint.complete_checkpoints(run)
    if not done:
        raise UserError(f"{str(run)!r} has no complete checkpoint yet", where="RUN",
                        hint="checkpoints are written every train.checkpoint_every iterations")
    if iteration is None:
        folder = done[-1]
    else:
        folder = checkpoint.checkpoint_dir(run, iteration)
        if folder not in done:
            raise UserError(f"no checkpoint after iteration {iteration}", where="--iteration",
                            hint=f"available: {_iterations(done)}")
    if problems := damage(folder):
        others = [p for p in done if p != folder]
        raise DamagedFile(problems[0][0], problems[0][1], hint="export an older checkpoint with --iteration"
                          + (f" (available: {_iterations(others)})" if others else ""))
    recipe, _ = load_recipe(run / RESOLVED, env=True, resolved=True)
    backend = recipe.backend.build()  # a backend or model that cannot export says so (grpo.core.abilities)
    policy = recipe.model.build()
    state = backend.read_trained(folder)
    averaged = read_average(folder) if ema else {}
    state.update(averaged)
    bad = next((name for name, value in state.items() if not bool(torch.isfinite(value).all())), None)
    if bad is not None:
        raise UserError(f"{folder.name} holds weights that are inf or nan (e.g. {bad!r}); nothing was exported",
                        where="RUN", hint="export an earlier checkpoint with --iteration N")
    params = dict(policy.denoiser.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise UserError(f"the checkpoint has weights the model lacks, e.g. {unknown[0]!r}", where="RUN",
                        hint="was the model changed since the run?")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
    out.mkdir(parents=True, exist_ok=True)
    policy.export(out)
    kind = "EMA" if averaged else "trained"
    console.print(f"[green]exported[/] {folder.name} of {run} ({len(state)} {kind} tensors) to {out}")
