"""Per-rank memory of the training state under ZeRO 0, 2 and 3 on 2 ranks (the bundled shapes model).

Each stage is one real `grpo run --nproc 2` iteration of recipes/shapes_branch.toml (KL term on, so
the frozen reference is counted too); the DeepSpeed backend logs what rank 0 holds as ``memory/*``.

    OMP_NUM_THREADS=1 python benchmarks/zero_memory/run.py

Writes results.md and results.json beside this file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KINDS = ("parameters", "gradients", "master_weights", "optimizer_state", "reference")


def measure(stage: int, precision: str, work: Path) -> dict[str, float]:
    out = work / f"zero{stage}-{precision}"
    sets = [f"backend={{use='deepspeed', zero_stage={stage}, precision='{precision}'}}", "train.iterations=1", "train.prompts_per_iteration=2",
            "eval.every=0", "train.checkpoint_every=100"]
    cmd = [sys.executable, "-m", "grpo.cli.main", "run", str(ROOT / "recipes" / "shapes_branch.toml"), "--out", str(out),
           "--nproc", "2", "--quiet", *[x for s in sets for x in ("--set", s)]]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    record = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("kind") == "train")
    return {k: record.get(f"memory/{k}", 0.0) for k in KINDS}


def main() -> None:
    cases = [(stage, precision) for precision in ("fp32", "bf16") for stage in (0, 2, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {case: measure(*case, Path(tmp)) for case in cases}
    total = {c: sum(v for k, v in r.items() if k != "reference") for c, r in rows.items()}
    (HERE / "results.json").write_text(json.dumps({"machine": platform.machine(), "ranks": 2, "mib": {
        f"zero{s}-{p}": r for (s, p), r in rows.items()}}, indent=1) + "\n")
    lines = [
        "# Per-rank training state under ZeRO, 2 ranks",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU (gloo). Model: the bundled shapes UNet, "
        "full fine-tune with AdamW and the KL reference, fp32 or bf16 weights. One `grpo run --nproc 2` iteration of "
        "`recipes/shapes_branch.toml` per stage; rank 0's tensors, counted by the DeepSpeed backend "
        "(`memory/*` in metrics.jsonl), in MiB. Gradients are those held at the optimizer step.",
        "",
        "| weights | ZeRO stage | parameters | gradients | fp32 master weights | optimizer state | training state "
        "| vs ZeRO-0 | KL reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (stage, precision), r in rows.items():
        ratio = total[(stage, precision)] / total[(0, precision)]
        lines.append(f"| {precision} | {stage} | {r['parameters']:.2f} | {r['gradients']:.2f} | "
                     f"{r['master_weights']:.2f} | {r['optimizer_state']:.2f} | {total[(stage, precision)]:.2f} | "
                     f"{ratio:.2f} | {r['reference']:.2f} |")
    lines += [
        "",
        "Reading: with bf16 weights (the GPU setting), ZeRO-3 holds exactly half of ZeRO-0's per-rank state "
        "on 2 ranks: parameters, gradients, fp32 master weights and AdamW moments are all partitioned; ZeRO-2 "
        "keeps every bf16 parameter on every rank. With fp32 weights ZeRO-3 holds 0.63 of ZeRO-0: DeepSpeed "
        "keeps an fp32 master partition even when the weights themselves are fp32 (a second copy of this "
        "rank's share), which ZeRO-0 does not need. The frozen KL reference is cast to the weights' precision "
        "and, under ZeRO-3, partitioned like the trained model. Activations are not in this table: they "
        "depend on the micro-batch, not on the stage.",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 python benchmarks/zero_memory/run.py`.",
    ]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
