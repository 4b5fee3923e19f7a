"""Wall time of the quick `grpo` commands against `python -c "import torch"`, measured side by side.

Each round runs the baseline and every command once, in turn, in fresh processes (one thread), so
that a slow moment of the machine falls on all of them; the ratio of medians is reported. Writes
``results.md`` next to this file.

    OMP_NUM_THREADS=1 python benchmarks/cli_startup/run.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from benchmarks.shapes_alignment.make_figures import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGET = 1.5
COMMANDS = [
    ["--help"],
    ["plugins", "list", "--json"],
    ["plugins", "show", "flux"],
    ["validate", "recipes/shapes_dance.toml"],
    ["plan", "recipes/shapes_branch.toml"],
    ["validate", "recipes/flux_dance.toml"],
]


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grpo = shutil.which("grpo")
    entry = [grpo] if grpo else [sys.executable, "-m", "grpo.cli.main"]
    baseline = [sys.executable, "-c", "import torch"]
    wall(baseline, env)  # warm the file cache once
    times: dict[str, list[float]] = {"import torch": []}
    names = ["grpo " + " ".join(c) for c in COMMANDS]
    for name in names:
        times[name] = []
    for r in range(args.rounds):
        times["import torch"].append(wall(baseline, env))
        for name, command in zip(names, COMMANDS, strict=True):
            times[name].append(wall([*entry, *command], env))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    base = statistics.median(times["import torch"])
    lines = [
        "# CLI startup",
        "",
        f"Machine: {machine()}, Python {platform.python_version()}. Each command in a fresh process with one thread, {args.rounds} rounds; in each "
        "round the baseline and every command ran once, in turn. Median wall seconds, and the ratio to the "
        f"baseline's median (target: at most {TARGET}×).",
        "",
        "| command | median s | min s | × import torch |",
        "|---|---:|---:|---:|",
    ]
    worst = 0.0
    for name, values in times.items():
        ratio = statistics.median(values) / base
        if name != "import torch":
            worst = max(worst, ratio)
        label = 'python -c "import torch"' if name == "import torch" else name
        lines.append(f"| `{label}` | {statistics.median(values):.2f} | {min(values):.2f} | {ratio:.2f} |")
    lines += ["", f"Largest ratio: {worst:.2f}× ({'within' if worst <= TARGET else 'over'} the {TARGET}× target).",
              "", "Reproduce: `OMP_NUM_THREADS=1 python benchmarks/cli_startup/run.py`."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
