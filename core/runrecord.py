"""What a run writes about itself and checks when it resumes: the resolved recipe, the settings each
checkpoint was trained with, the checkpoint to resume from, and finite trained weights."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from . import checkpoint
from .config import Recipe
from .dist import Group
from .errors import UserError
from .recipe import check_resume_changes
from .rundir import RunDir

log = logging.getLogger(__name__)


def write_resolved(dirs: RunDir, recipe: Recipe) -> None:
    """``recipe.resolved.toml``: every table with its defaults, the parts that ran, and provenance."""
    resolved = {**recipe.to_dict(), "parts": recipe.strategy.records(), "provenance": recipe.provenance()}
    dirs.resolved.write_text(tomli_w.dumps(resolved))


def save_recipe(directory: Path, recipe: Recipe) -> None:
    """The settings a checkpoint's iterations were trained with, kept in the checkpoint."""
    (directory / checkpoint.RECIPE).write_text(json.dumps(recipe.to_dict()) + "\n")


def recorded_changes(folder: Path, iteration: int, recipe: Recipe, dirs: RunDir) -> dict[str, list]:
    """The settings that differ from those the checkpoint was trained with ({key: [old, new]}); a
    UserError for any that a resumed run may not change (an edited ``recipe.resolved.toml``)."""
    recorded = folder / checkpoint.RECIPE
    if not recorded.is_file():  # written by an earlier version
        return {}
    now = json.loads(json.dumps(recipe.to_dict()))
    return check_resume_changes(json.loads(recorded.read_text()), now, where=str(dirs.resolved),
                                what=f"the recipe differs from the one the checkpoint after iteration {iteration} "
                                     "was trained with: it")


@dataclass
class Resumed:
    """Where a resumed run continues from, what it changed and which damaged checkpoints it set aside
    (its ``resume`` record in ``metrics.jsonl``)."""

    start: int = 0
    elapsed: float = 0.0
    changed: dict[str, list] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"from_iteration": self.start, "changed": self.changed, "damaged_checkpoints": self.damaged}


def resume(dirs: RunDir, recipe: Recipe, group: Group, load: Any) -> Resumed:
    """Load the newest complete checkpoint with `load(folder)` (backend and weight copies), after
    checking its ranks and its settings; set damaged newer ones aside; rewrite the resolved recipe."""
    found, damaged = checkpoint.usable(dirs.root)
    out = Resumed(damaged=[p.name for p in damaged])
    if found is not None:
        state = checkpoint.engine_state(found[0])
        if int(state.get("world_size", 1)) != group.size:
            raise UserError(f"the checkpoint was written by {state.get('world_size', 1)} rank(s); this run "
                            f"has {group.size}", where="--resume", hint=f"resume with --nproc {state.get('world_size', 1)}")
        out.changed = recorded_changes(found[0], found[1], recipe, dirs)
        load(found[0])
        out.start, out.elapsed = found[1], float(state.get("elapsed", 0.0))
        log.info("resuming at iteration %d from %s", out.start, found[0])
    elif group.main:
        log.warning("%s has no checkpoint yet: the run starts again from iteration 0", dirs.root)
    group.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    if group.main:
        checkpoint.set_aside(damaged)
        dirs.finished.unlink(missing_ok=True)
        write_resolved(dirs, recipe)  # the settings from here on (only those a resumed run may change differ)
    return out


def check_finite_weights(finite: bool, run_dir: Path, iteration: int) -> None:
    """Stop, before anything is logged or checkpointed, when an update made a trained weight inf or
    nan: the checkpoints already written hold finite weights."""
    if finite:
        return
    found = checkpoint.latest(run_dir)
    kept = (f"the checkpoint after iteration {found[1]} holds the last finite weights" if found
            else "no checkpoint was written yet")
    raise UserError(f"the trained weights became inf or nan in the update of iteration {iteration}; the run stopped",
                    where=str(run_dir), hint=f"{kept}; the learning rate is the usual cause: start a new run with a "
                                             "smaller train.lr (metrics.jsonl shows how the loss and gradient norm grew)")
