"""Evaluation of a shapes run broken down by the kind of scene asked for (object count × shape).

    python benchmarks/shapes_alignment/by_kind.py runs/shapes-dance [--base 0] [--final LAST]

Reads the run's resolved recipe (to rebuild its evaluation prompts in order) and two of its
evaluations; prints, for every (count, shape) of the training evaluation set, the number of images,
the base model's exact-match, shape and count rates, and the paired difference of exact match
between the two evaluations (mean ± 95% interval). Which kinds of scene the base model gets wrong
tells where there is room for the alignment to show, and which component it has to move.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from grpo.analysis.report import eval_iterations, load_eval
from grpo.cli.common import load_recipe
from grpo.core.stats import mean_ci
from grpo.plugins.shapes.world import parse_caption


def breakdown(run_dir: Path, base: int | None, final: int | None, set_name: str = "train") -> str:
    recipe, _ = load_recipe(run_dir / "recipe.resolved.toml", [], env=True)
    sets = recipe.prompts.build().eval_sets()
    if set_name not in sets:
        raise SystemExit(f"{run_dir} has no evaluation set {set_name!r}; its sets: {', '.join(sets)}")
    prompts = sets[set_name]
    its = eval_iterations(run_dir)
    b = its[0] if base is None else base
    f = its[-1] if final is None else final
    before, after = load_eval(run_dir, b)[set_name], load_eval(run_dir, f)[set_name]
    reward = next(k for k in before if k.endswith("/exact")).rsplit("/", 1)[0]
    if len(before[f"{reward}/exact"]) != len(prompts):
        raise SystemExit(f"{run_dir}: {len(prompts)} evaluation prompts but {len(before[f'{reward}/exact'])} scores")
    kinds: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, caption in enumerate(prompts):
        scene = parse_caption(caption)
        kinds[(scene.count, scene.shape)].append(i)

    def values(d: dict[str, list[float]], measure: str, idx: list[int]) -> torch.Tensor:
        return torch.tensor([d[f"{reward}/{measure}"][i] for i in idx], dtype=torch.float64)

    rows = [f"{run_dir}: {set_name} set, iteration {b} → {f}",
            "| objects | shape | images | exact (base) | shape (base) | count (base) | exact: paired difference |",
            "|---|---|---|---|---|---|---|"]
    for (count, shape), idx in sorted(kinds.items()):
        diff, ci = mean_ci(values(after, "exact", idx) - values(before, "exact", idx))
        base_rates = [float(values(before, m, idx).mean()) for m in ("exact", "shape", "count")]
        rows.append(f"| {count} | {shape} | {len(idx)} | " + " | ".join(f"{r:.2f}" for r in base_rates) + " | "
                    f"{diff:+.3f} ± {ci:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--base", type=int, default=None, help="iteration of the base evaluation (default: first)")
    parser.add_argument("--final", type=int, default=None, help="iteration compared with it (default: last)")
    parser.add_argument("--set", dest="set_name", default="train", help="evaluation set (train or held-out)")
    args = parser.parse_args()
    print(breakdown(args.run, args.base, args.final, args.set_name))


if __name__ == "__main__":
    main()
