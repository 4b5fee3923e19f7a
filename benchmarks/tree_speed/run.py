"""Seconds per iteration of BranchGRPO variants relative to DanceGRPO, at equal leaves and steps.

    OMP_NUM_THREADS=1 python benchmarks/tree_speed/run.py --iterations 3 --out benchmarks/tree_speed

Runs each strategy on the shapes world (bundled model, the shapes recipes' settings, evaluation
off) in one process, one after the other, and writes ``results.md``: measured seconds per
iteration (rollout and update separately), the ratio to DanceGRPO, and the ratio predicted by the
exact counts (rollout forwards + 3 × trained edges, a backward costing about two forwards).
The paper's ratios (FLUX, 20 steps, 16 leaves): BranchGRPO 0.71, depth-pruned 0.45, Mix 0.21. The
peers' rows (Flow-GRPO, MixGRPO, MixGRPO-Flash) and BranchGRPO-Mix-Flash use their shapes recipes at
iteration 0 (the windows at steps 0-3); the paper has no ratio for them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from benchmarks.shapes_alignment.make_figures import machine  # noqa: E402
from grpo.cli.common import load_recipe
from grpo.core.engine import Trainer
from grpo.core.plan import cost
from grpo.core.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = [
    ("DanceGRPO (f = 1.0)", "shapes_dance.toml", ["strategy.timestep_fraction=1.0", "strategy.step_window=[]"]),
    ("BranchGRPO", "shapes_branch.toml", ["strategy.pruned_depths=[]"]),
    ("BranchGRPO, depth-pruned", "shapes_branch_deppru.toml", []),
    ("BranchGRPO, width-pruned", "shapes_branch_widpru.toml", ["strategy.pruned_depths=[]"]),
    ("BranchGRPO-Mix", "shapes_branch_mix.toml", []),
    ("BranchGRPO-Mix-Flash", "shapes_branch_mix_flash.toml", []),
    ("Flow-GRPO", "shapes_flowgrpo.toml", []),
    ("MixGRPO", "shapes_mixgrpo.toml", []),
    ("MixGRPO-Flash", "shapes_mixgrpo_flash.toml", []),
]
PAPER = {"DanceGRPO (f = 1.0)": 1.0, "BranchGRPO": 0.71, "BranchGRPO, depth-pruned": 0.45,
         "BranchGRPO, width-pruned": 0.45, "BranchGRPO-Mix": 0.21}  # the others: not in the paper


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"{machine()}, {torch.get_num_threads()} torch thread(s) (torch {torch.__version__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--name", default="results.md", help="file name of the table")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe_file, sets in VARIANTS:
            sets = [*sets, f"train.iterations={args.iterations}", "eval.every=0", "logging.tensorboard=false",
                    "strategy.kl_beta=0"]  # as measured: the cost of the tree alone, no reference forwards
            recipe, _ = load_recipe(ROOT / "recipes" / recipe_file, sets, env=True)
            report = cost(recipe)
            run_dir = Path(tmp) / recipe_file
            Trainer(recipe, run_dir).run()
            train = [r for r in read_metrics(run_dir) if r["kind"] == "train"][1:]  # the first warms up
            t_roll, t_upd, t_it = (sum(r[k] for r in train) / len(train)
                                   for k in ("time/rollout", "time/update", "time/iteration"))
            rows.append((name, report.plan.rollout_forwards, report.trained_edges, t_roll, t_upd, t_it))
    base = rows[0]
    lines = ["# Tree speed: seconds per iteration relative to DanceGRPO", "",
             f"Machine: {device_name()}; measured in one process; "
             f"{args.iterations} iterations each (the first not counted), 8 prompts × 8 leaves, 16 steps.", "",
             "| strategy | rollout forwards / tree | trained edges / tree | rollout s | update s | s / iteration "
             "| ratio | predicted by counts | paper |", "|---|---|---|---|---|---|---|---|---|"]
    for name, fwd, edges, t_roll, t_upd, t_it in rows:
        predicted = (fwd + 3 * edges) / (base[1] + 3 * base[2])
        lines.append(f"| {name} | {fwd} | {edges} | {t_roll:.1f} | {t_upd:.1f} | {t_it:.1f} | {t_it / base[5]:.2f} "
                     f"| {predicted:.2f} | {f'{PAPER[name]:.2f}' if name in PAPER else '—'} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / args.name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
