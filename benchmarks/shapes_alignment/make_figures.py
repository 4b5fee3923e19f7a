"""Figures and tables of the shapes alignment runs, for the README.

    python benchmarks/shapes_alignment/make_figures.py runs/shapes-dance runs/shapes-branch \\
        --out docs/images

Writes, from finished run directories: ``<out>/alignment_curves.png`` (evaluation measures against
training minutes, every run), ``<out>/<run>_before_after.png`` and ``benchmarks/shapes_alignment/
results.md`` (paired differences between each run's first and last evaluation, with 95% intervals,
and the training time).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from grpo.core.report import before_after, eval_iterations, markdown_table, paired_differences, plot_curves
from grpo.core.runlog import read_metrics

HERE = Path(__file__).parent


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--note", default="", help="how the runs were made (threads, concurrency)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {r.name: r for r in args.runs}
    measures = ["shapes-faithfulness", "shapes-faithfulness/exact", "shapes-faithfulness/background",
                "shapes-faithfulness/colour", "shapes-faithfulness/count", "shapes-faithfulness/shape"]
    plot_curves(runs, measures[:2], args.out / "alignment_curves.png", x_axis="minutes")
    plot_curves(runs, measures[2:], args.out / "alignment_components.png", x_axis="minutes")
    lines = ["# Shapes alignment runs", "", f"Machine: {machine()}. {args.note}".strip(), ""]
    for name, run in runs.items():
        its = eval_iterations(run)
        records = read_metrics(run)
        train = [r for r in records if r["kind"] == "train"]
        minutes = sum(r["time/iteration"] for r in train) / 60
        eval_minutes = sum(r.get("time/evaluation", 0.0) for r in records if r["kind"] == "eval") / 60
        per_it = minutes * 60 / max(len(train), 1)
        before_after(run, its[0], its[-1], args.out / f"{name}_before_after.png")
        lines += [f"## {name}", "",
                  f"{len(train)} iterations, {minutes:.1f} minutes of training ({per_it:.1f} s per iteration) "
                  f"and {eval_minutes:.1f} minutes of evaluation. Paired differences between iterations "
                  f"{its[0]} and {its[-1]} on the same prompts and noise; bold where beyond the 95% interval.", "",
                  markdown_table(paired_differences(run), its[0], its[-1]), ""]
    (HERE / "results.md").write_text("\n".join(lines))
    print((HERE / "results.md").read_text())


if __name__ == "__main__":
    main()
