"""`grpo report RUN_DIR`: paired evaluation differences, curves, paired gains and before/after samples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grpo.analysis.report import write_report
from grpo.core.errors import UserError
from grpo.core.rundir import RunDir

from .common import console, guard


@guard
def report(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Summarise a run: what changed between its first and last evaluation, with 95% intervals."""
    if not RunDir(run_dir).metrics.is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no metrics.jsonl)",
                        hint="give the --out directory of a `grpo run`")
    out = write_report(run_dir)
    console.print((out / "summary.md").read_text(), markup=False)
    console.print(f"[green]written[/]: {out}")
