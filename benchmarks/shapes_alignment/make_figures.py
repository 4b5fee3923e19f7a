"""Figures and tables of the shapes alignment runs, for the README.

    python benchmarks/shapes_alignment/make_figures.py "runs/c-1900=white noise" "runs/d-blk4=4×4 tiles" \
        "runs/d-blk8=8×8 tiles (the recipe)" --gains "runs/d-blk8=seed 0" "runs/seed1=seed 1" \
        "runs/seed2=seed 2" --before-after runs/d-blk8=shapes-dance --out docs/images

Each run is a finished run directory, optionally ``=LABEL`` for the legend. Writes
``<out>/alignment_curves.png`` and ``<out>/alignment_components.png`` (evaluation measures against
training minutes, every run), ``<out>/alignment_gains.png`` (paired gain over the first evaluation
against iteration, for the ``--gains`` runs, else every run) and, with ``--before-after DIR=NAME``,
``<out>/NAME_before_after.png``; prints each run's paired differences between its first and last evaluation with 95%
intervals and the training time (as Markdown, also written to ``--results FILE`` when given).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from grpo.analysis.report import (
    before_after,
    eval_iterations,
    markdown_table,
    paired_differences,
    plot_curves,
    plot_gains,
)
from grpo.core.runlog import read_metrics


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def labelled(specs: list[str]) -> dict[str, Path]:
    """``DIR`` or ``DIR=LABEL`` → {label: directory}, in the given order."""
    out = {}
    for spec in specs:
        path, _, label = spec.partition("=")
        run = Path(path)
        if not (run / "metrics.jsonl").is_file():
            raise SystemExit(f"{path}: not a run directory (no metrics.jsonl)")
        out[label or run.name] = run
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, each optionally DIR=LABEL")
    parser.add_argument("--gains", nargs="+", default=None, help="runs of the paired-gain figure (default: all)")
    parser.add_argument("--before-after", default=None,
                        help="DIR=NAME: the first and last evaluation grid of this run as <out>/NAME_before_after.png")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--results", type=Path, default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--note", default="", help="how the runs were made (threads, concurrency)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = labelled(args.runs)
    measures = ["shapes-faithfulness", "shapes-faithfulness/exact", "shapes-faithfulness/background",
                "shapes-faithfulness/colour", "shapes-faithfulness/count", "shapes-faithfulness/shape"]
    plot_curves(runs, measures[:2], args.out / "alignment_curves.png", x_axis="minutes")
    plot_curves(runs, measures[2:], args.out / "alignment_components.png", x_axis="minutes")
    plot_gains(labelled(args.gains) if args.gains else runs, measures[:2], args.out / "alignment_gains.png")
    if args.before_after:
        ((stem, run),) = labelled([args.before_after]).items()
        its = eval_iterations(run)
        before_after(run, its[0], its[-1], args.out / f"{stem}_before_after.png")
    lines = ["# Shapes alignment runs", "", f"Machine: {machine()}. {args.note}".strip(), ""]
    for name, run in runs.items():
        its = eval_iterations(run)
        records = read_metrics(run)
        train = [r for r in records if r["kind"] == "train"]
        minutes = sum(r["time/iteration"] for r in train) / 60
        eval_minutes = sum(r.get("time/evaluation", 0.0) for r in records if r["kind"] == "eval") / 60
        per_it = minutes * 60 / max(len(train), 1)
        lines += [f"## {name}", "",
                  f"{len(train)} iterations, {minutes:.1f} minutes of training ({per_it:.1f} s per iteration) "
                  f"and {eval_minutes:.1f} minutes of evaluation. Paired differences between iterations "
                  f"{its[0]} and {its[-1]} on the same prompts and noise; bold where beyond the 95% interval.", "",
                  markdown_table(paired_differences(run), its[0], its[-1]), ""]
    text = "\n".join(lines)
    if args.results is not None:
        args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
