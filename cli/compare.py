"""`grpo compare RECIPE... --out DIR`: run recipes head to head, then write one report.

Each (recipe, seed) runs as its own `grpo run` process into ``DIR/runs/<recipe>-seed<N>``, with
its log in ``DIR/logs/``. The comparison is fair by construction and checked before anything runs:
the recipes must agree on the prompts, the evaluation noise and steps and the prompts per iteration,
so that every run of a seed sees the same training prompts and every run the same evaluation prompts
and noise; every other setting in which they differ is said before the runs start and in the report.
With ``--time-budget`` every run trains for the same minutes and is evaluated at training-time marks
(``eval.every_minutes``). Running the same command again resumes: finished runs are kept, interrupted
ones continue.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from grpo.analysis import compare as report
from grpo.core.errors import UserError
from grpo.core.recipe import INFORMATIONAL
from grpo.core.rundir import FINISHED, RESOLVED, RunDir
from grpo.core.runlog import read_metrics
from grpo.core.tomlfile import tomllib

from .common import console, err_console, guard, load_recipe

# what every compared recipe must agree on (dotted paths into the resolved recipe): the training
# prompts, the evaluation prompts and noise, and the global batch. Other differences are reported.
SHARED = ("prompts", "eval.seed", "eval.steps", "train.prompts_per_iteration")


@dataclass
class Job:
    name: str
    label: str
    seed: int
    recipe: Path
    sets: list[str]
    run_dir: Path
    log: Path
    proc: subprocess.Popen | None = None
    status: str = "queued"
    started: float = 0.0

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "grpo.cli.main", "run"]
        if (self.run_dir / RESOLVED).is_file():
            return [*base, "--resume", str(self.run_dir), "--quiet"]
        sets = [x for s in self.sets for x in ("--set", s)]
        return [*base, str(self.recipe), *sets, "--out", str(self.run_dir), "--quiet"]


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data




def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text!r} is not a list of distinct non-negative integers", where="--seeds",
                        hint="for example --seeds 0,1,2")
    return seeds


def _resolve(recipes: list[Path], sets: list[str]) -> dict[str, dict[str, Any]]:
    resolved = {}
    for path in recipes:
        if not path.is_file():
            raise UserError(f"recipe {str(path)!r} does not exist", where="RECIPE", hint="give the path of a .toml recipe")
        r, _ = load_recipe(path, sets, env=True)
        resolved[path.stem] = r.to_dict()
    return resolved


def _check_fair(resolved: dict[str, dict[str, Any]]) -> list[str]:
    """Refuse recipes whose runs would not see the same prompts, evaluation or batch; return a line
    per other setting in which a recipe differs from the first (compared anyway)."""
    labels = list(resolved)
    first, said = labels[0], []
    for label in labels[1:]:
        for key in SHARED:
            diffs = report.differences(_lookup(resolved[first], key), _lookup(resolved[label], key), key)
            if diffs:
                where, a, b = diffs[0]
                raise UserError(
                    f"recipes {first!r} and {label!r} differ in {where} ({a!r} vs {b!r}): their runs would not see "
                    "the same prompts, evaluation or batch",
                    where=where, hint=f"make {where} equal in both recipes, or pass --set {where}=... to the comparison")
        for where, a, b in report.differences(resolved[first], resolved[label]):
            if not where.startswith(report.ALGORITHM):
                said.append(f"{label} differs from {first} in {where}: {b!r} (against {a!r})")
    return said


def plan_jobs(recipes: list[Path], seeds: list[int], sets: list[str], out: Path,
              time_budget: float | None = None) -> tuple[list[Job], list[str]]:
    """Validate the recipes, check that they compare fairly, and lay out one job per (recipe, seed);
    also return what the comparison says before it runs (settings that differ, marks chosen)."""
    labels = [p.stem for p in recipes]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise UserError(f"two recipes share the name {sorted(dupes)[0]!r}", where="RECIPE",
                        hint="give each compared recipe a distinct file name (it names the runs)")
    resolved, notes = _resolve(recipes, sets), []
    if time_budget is not None and not any(r["eval"]["every_minutes"] for r in resolved.values()):
        # at equal training time, evaluations every N iterations land at different times: use time marks
        minutes = round(time_budget / 4, 3)
        sets = [*sets, f"eval.every_minutes={minutes}"]
        resolved = _resolve(recipes, sets)
        notes.append(f"evaluating every {minutes:g} minutes of training (eval.every_minutes), so that every run "
                     "is evaluated at the same training times")
    notes += _check_fair(resolved)
    jobs = []
    for seed in seeds:  # seed-major: the runs of one seed run side by side, so a partial comparison is paired
        for path in recipes:
            name = f"{path.stem}-seed{seed}"
            run_dir = out / "runs" / name
            job_sets = [*sets, f"train.seed={seed}"]
            if (run_dir / RESOLVED).is_file():
                settings = copy.deepcopy(resolved[path.stem])
                settings["train"]["seed"] = seed
                _check_same_settings(run_dir, settings)
            jobs.append(Job(name, path.stem, seed, path, job_sets, run_dir, out / "logs" / f"{name}.log"))
    return jobs, notes


def _check_same_settings(run_dir: Path, new: dict[str, Any]) -> None:
    """A run kept from an earlier invocation must have been made with the same (resolved) settings.

    The stored recipe is resolved again, so that an option added since (with its default) is not
    a difference."""
    before = tomllib.loads((run_dir / RESOLVED).read_text())
    for key in INFORMATIONAL:  # records of what ran, not settings
        before.pop(key, None)
    try:
        before = load_recipe(run_dir / RESOLVED, [], env=True, resolved=True)[0].to_dict()
    except UserError:  # stored under options this version no longer has: compared as written
        pass
    changed = [k for k in sorted(set(new) | set(before)) if new.get(k) != before.get(k)]
    if changed:
        raise UserError(f"{str(run_dir)!r} was made with other settings ([{', '.join(changed)}] differ)",
                        where="--out", hint="use another --out, or delete that run to redo it")


def _row(job: Job) -> list[str]:
    it, score, per_it, minutes = "–", "–", "–", "–"
    if RunDir(job.run_dir).metrics.is_file():
        records = read_metrics(job.run_dir, quiet=True)  # a line being written is skipped
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        total = tomllib.loads((job.run_dir / RESOLVED).read_text())["train"]["iterations"]
        it = f"{len(train)}/{total}"
        if train:
            per_it = f"{sum(r['time/iteration'] for r in train) / len(train):.1f}"
            minutes = f"{train[-1].get('time/elapsed', 0.0) / 60:.1f}"
        if evals:
            keys = [k for k in evals[-1] if k.count("/") == 1 and not k.startswith("time/")]
            keys.sort(key=lambda k: not k.startswith("held-out/"))
            if keys:
                score = f"{evals[-1][keys[0]]:.3f} @{evals[-1]['iteration']}"
    return [job.name, job.status, it, score, per_it, minutes]


def _table(jobs: list[Job]) -> Table:
    table = Table(title="grpo compare (evaluation: held-out main reward @ iteration)", title_justify="left")
    for col in ("run", "status", "iterations", "evaluation", "s / iteration", "training min"):
        table.add_column(col)
    colour = {"done": "green", "running": "yellow", "failed": "red", "kept": "green"}
    for job in jobs:
        cells = _row(job)
        cells[1] = f"[{colour.get(job.status, 'white')}]{job.status}[/]"
        table.add_row(*cells)
    return table


def run_jobs(jobs: list[Job], parallel: int, quiet: bool) -> list[Job]:
    """Run the unfinished jobs, `parallel` at a time, with a live table; return the failed ones."""
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # several small processes beat one with many threads on a CPU
    for job in jobs:
        if (job.run_dir / FINISHED).is_file():
            job.status = "kept"
    pending = [j for j in jobs if j.status == "queued"]
    running: list[Job] = []
    failed: list[Job] = []

    def poll() -> None:
        for job in list(running):
            rc = job.proc.poll() if job.proc else None
            if rc is None:
                continue
            running.remove(job)
            job.status = "done" if rc == 0 else "failed"
            if rc != 0:
                failed.append(job)
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.run_dir.parent.mkdir(parents=True, exist_ok=True)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with job.log.open("a") as fh:
                job.proc = subprocess.Popen(job.command(), stdout=fh, stderr=subprocess.STDOUT, env=env)
            job.status, job.started = "running", time.time()
            running.append(job)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)  # `kill` stops the runs too, not only this process
    try:
        if quiet:
            while pending or running:
                poll()
                time.sleep(0.5)
        else:
            with Live(_table(jobs), console=console, refresh_per_second=1) as live:
                while pending or running:
                    poll()
                    live.update(_table(jobs))
                    time.sleep(0.5)
                live.update(_table(jobs))
            if not console.is_terminal:
                console.print()  # the table's last render ends without a newline when written to a file
    except KeyboardInterrupt:
        _stop_runs(running)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failed


def _stop_runs(running: list[Job], grace: float = 60.0) -> None:
    """Forward the stop to every running `grpo run` and wait for each to end (killed after `grace`
    seconds), so that no run outlives the comparison and a rerun never meets a second writer."""
    for job in running:
        if job.proc is not None and job.proc.poll() is None:
            job.proc.terminate()
    deadline = time.monotonic() + grace
    for job in running:
        if job.proc is None:
            continue
        try:
            job.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()
        job.status = "stopped"


@guard
def compare(
    recipes: Annotated[list[Path] | None, typer.Argument(help="recipes to compare")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="comparison directory (runs/, logs/, report)")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="comma-separated training seeds")] = "0",
    iterations: Annotated[int | None, typer.Option("--iterations", help="train.iterations of every run")] = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="minutes of training per run (ends at train.iterations)")
    ] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="runs at a time (one CPU thread each by default)")] = 1,
    set_: Annotated[list[str], typer.Option("--set", help="override KEY=VALUE in every recipe")] = [],  # noqa: B006
    from_: Annotated[
        list[Path], typer.Option("--from", help="render a report from finished run directories instead")
    ] = [],  # noqa: B006
    target: Annotated[float | None, typer.Option(
        "--target", help="gain over the base whose time to reach the report gives (default: the first recipe's final gain)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no live table")] = False,
) -> None:
    """Run recipes head to head on identical prompts, seeds and evaluation noise; write report.md/.html."""
    if out is None:
        raise UserError("no --out directory given", where="--out", hint="grpo compare A.toml B.toml --out runs/cmp")
    if from_:
        if recipes:
            raise UserError("--from takes run directories, not recipes", where="--from",
                            hint="either grpo compare RECIPE... --out DIR, or grpo compare --from RUN... --out DIR")
        runs = [report.RunSummary.load(p) for p in from_]
        _finish(runs, out, target)
        return
    if not recipes:
        raise UserError("no recipes given", where="RECIPE", hint="grpo compare A.toml B.toml --out runs/cmp")
    if iterations is not None and time_budget is not None:
        raise UserError("--iterations and --time-budget are exclusive", where="--time-budget",
                        hint="compare at equal iterations or at equal training time, not both")
    if iterations is not None and iterations < 1:
        raise UserError(f"--iterations {iterations} must be at least 1", where="--iterations", hint="--iterations 50")
    if time_budget is not None and time_budget <= 0:
        raise UserError(f"--time-budget {time_budget} must be positive", where="--time-budget",
                        hint="minutes, e.g. --time-budget 30")
    if parallel < 1:
        raise UserError(f"--parallel {parallel} must be at least 1", where="--parallel", hint="--parallel 2")
    sets = list(set_)
    if iterations is not None:
        sets.append(f"train.iterations={iterations}")
    if time_budget is not None:
        sets.append(f"train.time_budget={time_budget}")
    jobs, notes = plan_jobs(recipes, _parse_seeds(seeds), sets, out, time_budget)
    for line in notes:
        console.print(f"[cyan]note[/]: {line}", markup=True, highlight=False)
    try:
        failed = run_jobs(jobs, parallel, quiet)
    except KeyboardInterrupt:
        err_console.print("[yellow]stopped[/]: every run was stopped at its last checkpoint; the same command "
                          "continues the comparison (finished runs are kept)")
        raise typer.Exit(130) from None
    finished = [report.RunSummary.load(j.run_dir, j.label) for j in jobs if (j.run_dir / FINISHED).is_file()]
    if finished:
        _finish(finished, out, target)
    if failed:
        for job in failed:
            err_console.print(f"[bold red]failed[/]: {job.name}; its log: {job.log}")
            tail = job.log.read_text().strip().splitlines()[-5:]
            err_console.print("\n".join("    " + line for line in tail), markup=False)
        raise typer.Exit(1)


def _finish(runs: list[report.RunSummary], out: Path, target: float | None = None) -> None:
    rows, measures, lead = report.write(runs, out, target=target)
    header, cells = report.table_rows(rows, measures)
    console.print(lead, markup=False)
    console.print(report.markdown(header, cells), markup=False)
    console.print(f"[green]written[/]: {out / 'report.md'}, {out / 'report.html'}")
