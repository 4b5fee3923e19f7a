"""BranchGRPO vs DanceGRPO on a Wan2.1-T2V-1.3B-sized transformer with random weights, on one GPU:
seconds per iteration, peak memory and model FLOP utilisation (MFU).

    python benchmarks/wan_gpu/run.py                 # on a GPU: writes results.md / results.json here
    python benchmarks/wan_gpu/run.py --tiny --cpu    # a small smoke run of the same code on a CPU

The transformer has Wan2.1-T2V-1.3B's configuration (30 layers, width 1536, 12 heads, FFN 8960,
UMT5 width 4096); the text encoder and VAE are tiny (they are not what the strategies differ in),
and the reward is the mean brightness of the video (cheap, so the time is the policy's). Every
strategy samples 16 leaves per prompt over 20 steps (the paper's tree: splits at 0, 3, 6, 9, b = 2),
one prompt per iteration, bf16 weights, through the same engine and recipe keys a user would write.
DiffusionNFT (an objective on the forward process) runs on the same 16 leaves, once as its release
samples them (16 chains, deterministic DPM-Solver++) and once on the paper's tree; each leaf is
trained at 19 of the 20 noise levels, and each such unit costs a forward of the old policy, one of
the reference (the KL) and a forward with backward.
MFU counts the transformer's FLOPs, measured with torch's FlopCounterMode on one forward and one
backward at the run's token count: (rollout forwards + trained units × (extra forwards + forward
and backward)) / time / the card's peak bf16 FLOP/s. The same counts predict each strategy's time
relative to DanceGRPO with f = 1.0, the paper's baseline; the table puts the measured ratio beside
that prediction and beside the paper's (FLUX.1-dev, seconds per iteration) where it has one.

Results are written after every strategy, so a run stopped early keeps the rows it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REWARD_MODULE = '''
import torch
from grpo.core.hookspecs import hookimpl
from grpo.core.reward import RewardOutput


class Brightness:
    """Mean brightness of a video: a reward that costs nothing next to the policy."""
    media = "video"

    def score(self, videos, prompts):
        return RewardOutput(videos.float().mean(dim=(1, 2, 3, 4)))


@hookimpl
def grpo_register_reward(registry):
    registry.add("benchmark-brightness", Brightness)
'''
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def build_pipeline(folder: Path, tiny: bool, device: str) -> None:
    """The pipeline, saved to `folder`; the transformer's random weights are drawn on `device` (a
    Wan2.1-1.3B-sized one takes a minute on a CPU)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    from grpo.testing.tiny_diffusers import t5_tokenizer

    tok = t5_tokenizer()
    text_dim = 32 if tiny else 4096
    shape = (dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2) if tiny else
             dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30))
    with torch.device(device):
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=text_dim,
                                            freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                            eps=1e-6, rope_max_seq_len=1024, **shape)
    pipe = WanPipeline(
        tokenizer=tok,
        text_encoder=UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=text_dim, d_ff=64, d_kv=8, num_layers=1,
                                                 num_heads=4, relative_attention_num_buckets=8)),
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),
        scheduler=FlowMatchEulerDiscreteScheduler(), transformer=transformer.to("cpu", torch.bfloat16))  # loaded as bf16
    pipe.save_pretrained(str(folder))


SDE = {"use": "dance-sde", "steps": 20, "shift": 3.0, "eta": 0.3}


def recipe(strategy: dict, sampler: dict, model: Path, prompts: Path, size: dict, device: str,
           iterations: int) -> dict:
    return {
        "model": {"use": "wan-t2v", "path": str(model), "guidance_scale": 1.0, "max_sequence_length": 64,
                  "precision": "bf16" if device == "cuda" else "fp32", "device": device,
                  "sigma_grid": "shifted", **size},  # the DanceGRPO-family trainers' grid, at the sampler's shift 3
        "strategy": strategy,
        "sampler": sampler,
        "reward": [{"use": "benchmark-brightness"}],
        "prompts": {"use": "file", "path": str(prompts), "eval_count": 0},
        "train": {"iterations": iterations, "prompts_per_iteration": 1, "micro_batch": 4, "rollout_batch": 16,
                  "optimizer_steps": 1, "checkpoint_every": 1000, "keep_checkpoints": 1},
        "eval": {"every": 0},
        "logging": {"tensorboard": False, "progress": False},
        "backend": {"use": "torch", "device": device},
        "plugins": {"modules": ["benchmark_reward"]},
    }


def transformer_flops(policy, device: str) -> tuple[float, float]:
    """FLOPs of one transformer forward, and of forward + backward, for one sample."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn((1, *policy.latent_shape), device=device)
    cond = policy.encode_prompts(["a dog runs on a beach"])
    sigma = torch.full((1,), 0.5, device=device)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            policy.velocity(x, sigma, cond)
    with FlopCounterMode(display=False) as both:
        policy.velocity(x, sigma, cond).float().square().mean().backward()
    policy.denoiser.zero_grad(set_to_none=True)
    return float(fwd.get_total_flops()), float(both.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a small transformer (smoke test)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU")
    ap.add_argument("--iterations", type=int, default=2, help="iterations per strategy (the first is warm-up)")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--only", nargs="*", default=None, metavar="PREFIX",
                    help="run only the rows whose names start with one of these (the first row, the baseline of "
                         "the ratios, always runs)")
    args = ap.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None)
    size = dict(frames=5, height=32, width=32) if args.tiny else dict(frames=args.frames, height=args.height,
                                                                     width=args.width)
    from grpo.core.engine import Trainer
    from grpo.core.recipe import parse
    from grpo.core.registry import load_registry

    tree = {"split_points": [0, 3, 6, 9], "branch_factor": 2}
    nft_tree = {"use": "branching", **tree, "ode_between_splits": True}  # as recipes/shapes_nft_tree.toml
    ode = {"use": "ode", "steps": 20, "shift": 3.0}  # the DiffusionNFT preset's solver, DPM-Solver++ (2)
    # name: (strategy table, sampler, the paper's s/iteration relative to DanceGRPO f = 1.0 or None, forwards
    # without gradient per trained unit besides its forward and backward)
    strategies = {
        "DanceGRPO (G 16, f 1.0)": ({"use": "dancegrpo", "group_size": 16, "timestep_fraction": 1.0}, SDE, 1.0, 0),
        "DanceGRPO (G 16, f 0.6)": ({"use": "dancegrpo", "group_size": 16, "timestep_fraction": 0.6}, SDE,
                                    469 / 698, 0),
        "BranchGRPO (splits 0, 3, 6, 9)": ({"use": "branchgrpo", **tree}, SDE, 493 / 698, 0),
        # five of the 16-node depths untrained: 138 edges per tree, the paper's 8.625 per leaf
        "BranchGRPO, depth pruning": ({"use": "branchgrpo", **tree, "pruned_depths": [16, 17, 18, 19, 20]}, SDE,
                                      314 / 698, 0),
        "BranchGRPO-Mix (window 4)": ({"use": "branchgrpo-mix", **tree, "window_size": 4}, SDE, 148 / 698, 0),
        # the old policy's and the reference's velocities (KL 1e-4) for each noised leaf
        "DiffusionNFT, 16 chains": ({"use": "diffusionnft", "group_size": 16}, ode, None, 2),
        "DiffusionNFT, the tree": ({"use": "diffusionnft", "topology": nft_tree}, SDE, None, 2),
    }
    baseline = next(iter(strategies))
    if args.only is not None:
        strategies = {k: v for k, v in strategies.items() if k == baseline or k.startswith(tuple(args.only))}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "benchmark_reward.py").write_text(REWARD_MODULE)
        sys.path.insert(0, str(tmp))
        (tmp / "prompts.txt").write_text("a dog runs on a beach\na red car drives through rain\n")
        print(f"building a {'tiny' if args.tiny else 'Wan2.1-1.3B-sized'} pipeline ...", flush=True)
        build_pipeline(tmp / "wan", args.tiny, device)
        registry = load_registry(["benchmark_reward"])
        flops: list[tuple[float, float]] = []  # measured once, on the first model that trains
        for name, (strategy, sampler, paper, extra) in strategies.items():
            gc.collect()  # the previous row's model, and a failed row's
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            data = recipe(strategy, sampler, tmp / "wan", tmp / "prompts.txt", size, device, args.iterations)
            run_dir = tmp / "".join(c if c.isalnum() else "-" for c in name)
            try:  # a row that fails (out of memory, say) is recorded as such and the next one runs
                rows[name] = measure(Trainer(parse(data, registry), run_dir), run_dir, device, flops, extra, peak)
            except (Exception, SystemExit) as exc:  # noqa: BLE001  (any failure is a result of the run)
                traceback.print_exc()
                rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
            rows[name]["paper_ratio"] = paper
            print(name, json.dumps(rows[name]), flush=True)
            write_results(args, rows, flops[0] if flops else None, peak, card, size, device)


def measure(trainer, run_dir: Path, device: str, flops: list, extra: int, peak: float | None) -> dict:
    """Trains one strategy's run and returns its row: seconds per iteration (after the first), counts,
    FLOPs, peak memory and MFU."""
    from grpo.core.runlog import read_metrics

    start = time.perf_counter()
    trainer.run()
    wall = time.perf_counter() - start
    if not flops:
        flops.append(transformer_flops(trainer.c.policy, device))
    fwd, both = flops[0]
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    train = train[1:] or train
    seconds = sum(r["time/iteration"] for r in train) / len(train)
    forwards = train[-1]["cost/rollout_forwards"]
    unit, units = next((k.removeprefix("cost/trained_"), v) for k, v in train[-1].items()
                       if k.startswith("cost/trained_"))
    work = forwards * fwd + units * (both + extra * fwd)
    return {
        "seconds_per_iteration": seconds, "rollout_forwards": forwards, "trained_units": units,
        "unit": unit, "extra_forwards_per_unit": extra,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "tflops_per_iteration": work / 1e12, "achieved_tflops": work / seconds / 1e12,
        "mfu": (work / seconds / 1e12) / peak if peak else None, "wall_seconds": wall,
    }


def write_results(args, rows: dict, flops: tuple[float, float] | None, peak: float | None, card: str, size: dict,
                  device: str) -> None:
    """results.md / results.json for the rows measured so far (ratios against the first row that ran)."""
    first = next((r for r in rows.values() if "error" not in r), None)
    flop_line = (f" Transformer FLOPs per sample: {flops[0] / 1e12:.2f} TFLOP forward, {flops[1] / 1e12:.2f} TFLOP "
                 f"forward + backward" + (f"; peak {peak:.0f} TFLOP/s bf16." if peak else ".")) if flops else ""
    lines = [f"# Wan2.1-1.3B-sized transformer on one {card}", "",
             f"Random weights (bf16), {size['frames']} frames at {size['height']}×{size['width']}, 20 steps, 16 leaves "
             f"per prompt, one prompt per iteration, mean of iterations 2-{args.iterations} (the first is "
             f"warm-up).{flop_line}", "",
             "Ratios are seconds per iteration relative to the first row that ran; *predicted* is the ratio of the "
             "transformer FLOPs the row's counts imply; *paper* is the paper's FLUX.1-dev ratio (698 s per "
             "iteration for DanceGRPO with f = 1.0). Trained units are edges (one step of a chain or of the "
             "tree: a forward and backward each) for the DanceGRPO and BranchGRPO rows, and noised leaves (a "
             "leaf at one noise level: two more forwards each) for DiffusionNFT's.", "",
             "| strategy | s / iteration | ratio | predicted | paper | rollout forwards | trained units | "
             "peak memory (GiB) | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        paper = f"{r['paper_ratio']:.2f}" if r["paper_ratio"] is not None else "–"
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].splitlines()[0][:120]} | | | {paper} | | | | | |")
            continue
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "–"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "–"
        ratio = r["seconds_per_iteration"] / first["seconds_per_iteration"]
        predicted = r["tflops_per_iteration"] / first["tflops_per_iteration"]
        lines.append(f"| {name} | {r['seconds_per_iteration']:.1f} | {ratio:.2f} | {predicted:.2f} | {paper} | "
                     f"{r['rollout_forwards']:.0f} | {r['trained_units']:.0f} | {mem} | {r['achieved_tflops']:.1f} | "
                     f"{mfu} |")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device == "cuda" and not args.tiny else "_smoke"
    (args.out / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"results{suffix}.json").write_text(json.dumps({"card": card, "size": size, "rows": rows}, indent=1)
                                                   + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
