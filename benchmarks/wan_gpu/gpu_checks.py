"""The GPU path end to end: each real-model recipe family (FLUX, SD3, Wan) through `grpo run` on a
tiny random-weight pipeline, with its recipe's DeepSpeed ZeRO-2 bf16 backend and with the torch
backend, and the shapes recipe with TF32 on and off. Reports, per run, where it trained (device,
DeepSpeed accelerator, process-group backend, from the run's ``runtime.json``) and the on-policy
ratios exp(log π_θ − log π_old) of its updates.

    python benchmarks/wan_gpu/gpu_checks.py            # on a GPU: writes checks.md / checks.json here
    python benchmarks/wan_gpu/gpu_checks.py --cpu      # the same runs on the CPU (fp32 kept as the recipes say)

Each run keeps its recipe's model, strategy, sampler, precision and backend; what changes is what
a tiny model needs (32×32 images, 5 frames, 16 text tokens), a reward that costs nothing (JPEG
compressibility for images, mean brightness for videos), one prompt per iteration, two iterations,
and one optimizer step per iteration, so that every ratio of the first update is measured before
any weight moved: a ratio away from 1 there is numerical disagreement between rollout and update.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from run import REWARD_MODULE  # noqa: E402  (the benchmark's brightness reward, for videos)

FAMILIES = {"FLUX": "flux_dance.toml", "SD3": "sd35_branch.toml", "Wan": "wanx_branch.toml"}
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a city street in the rain"]


def tiny_recipe(name: str, folder: Path, prompts: Path, backend: str, device: str) -> dict:
    data = tomllib.loads((ROOT / "recipes" / FAMILIES[name]).read_text())
    model = data["model"]
    model.update(path=str(folder), height=32, width=32, max_sequence_length=16, device=device)
    if "frames" in model:
        model["frames"] = 5
    data["reward"] = [{"use": "benchmark-brightness"}] if name == "Wan" else [{"use": "jpeg-compressibility"}]
    data["prompts"] = {"use": "file", "path": str(prompts), "eval_count": 2}
    data["train"].update(iterations=2, prompts_per_iteration=1, optimizer_steps=1, checkpoint_every=2)
    data["eval"] = {"every": 2, "grid_images": 2}
    data["logging"] = {"tensorboard": False, "progress": False}
    data["plugins"] = {"modules": ["check_reward"]}
    if backend == "torch":
        data["backend"] = {"use": "torch", "device": device}
    else:
        data["backend"]["device"] = device
    return data


def grpo_run(recipe: Path, out: Path, sets: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "grpo.cli.main", "run", str(recipe), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, (done.stdout + done.stderr)[-3000:], time.perf_counter() - start


def summary(out: Path, rc: int, tail: str, wall: float) -> dict:
    row: dict = {"rc": rc, "wall_seconds": round(wall, 1)}
    if rc != 0:
        row["error"] = tail
        return row
    row["runtime"] = json.loads((out / "runtime.json").read_text())
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r.get("kind") == "train"]
    row["updates"] = [{k: r[k] for k in ("iteration", "update/ratio_mean", "update/ratio_min", "update/ratio_max",
                                         "update/clip_fraction", "update/grad_norm", "time/iteration") if k in r}
                      for r in train]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU")
    ap.add_argument("--only", nargs="*", default=None, help="run only these checks (names as in the table)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    import torch

    from grpo.testing.tiny_diffusers import tiny_flux, tiny_sd3, tiny_wan

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "check_reward.py").write_text(REWARD_MODULE)
        (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")]))}
        env.pop("DS_ACCELERATOR", None)  # the backend must choose it from its device
        builders = {"FLUX": tiny_flux, "SD3": tiny_sd3, "Wan": tiny_wan}
        checks = [(f"{n} {b}", n, b) for n in FAMILIES for b in ("deepspeed", "torch")]
        checks += [(f"shapes tf32={t}", "shapes", t) for t in ("false", "true")]
        for label, name, variant in checks:
            if args.only is not None and label not in args.only:
                continue
            out = tmp / label.replace(" ", "_").replace("=", "-")
            if name == "shapes":
                sets = ["train.iterations=2", "train.optimizer_steps=1", "train.checkpoint_every=2", "eval.every=0",
                        f"train.tf32={variant}", f"backend.device='{device}'", "logging.progress=false",
                        "logging.tensorboard=false"]
                rc, tail, wall = grpo_run(ROOT / "recipes" / "shapes_dance.toml", out, sets, env)
                precision = "fp32"
            else:
                folder = tmp / f"model-{name}"
                if not folder.exists():
                    builders[name](folder)
                recipe = tmp / f"{label.replace(' ', '_')}.toml"
                data = tiny_recipe(name, folder, tmp / "prompts.txt", variant, device)
                recipe.write_text(tomli_w.dumps(data))
                precision = data["model"].get("precision", "fp32")
                rc, tail, wall = grpo_run(recipe, out, [], env)
            rows[label] = summary(out, rc, tail, wall)
            rows[label]["precision"] = precision
            print(label, json.dumps(rows[label]), flush=True)
            write_table(args.out, rows, card, device)  # after every run, so a stopped run keeps its rows


def write_table(folder: Path, rows: dict[str, dict], card: str, device: str) -> None:
    lines = [f"# The GPU path on one {card}", "",
             "| run | rc | device | DeepSpeed accelerator | process group | precision | ratio mean (it. 0) | "
             "ratio min / max (it. 0) | ratio min / max (it. 1) | s / iteration |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        if r["rc"] != 0:
            lines.append(f"| {label} | {r['rc']} | failed: see checks.json | | | | | | | |")
            continue
        b = r["runtime"].get("backend", {})
        u = r["updates"]
        mm = [f"{x['update/ratio_min']:.6f} / {x['update/ratio_max']:.6f}" for x in u]
        lines.append(f"| {label} | 0 | {b.get('device', '?')} | {b.get('accelerator', '–')} | {b.get('process_group')} | "
                     f"{r['precision']} | {u[0]['update/ratio_mean']:.7f} | {mm[0]} | {mm[-1]} | "
                     f"{u[-1]['time/iteration']:.2f} |")
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if device == "cuda" else "_smoke"
    (folder / f"checks{suffix}.md").write_text("\n".join(lines) + "\n")
    (folder / f"checks{suffix}.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
