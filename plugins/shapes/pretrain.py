"""Pre-train the `shapes` base model by flow matching on rendered scenes.

    python -m grpo.plugins.shapes.pretrain --minutes 40 --work runs/shapes-pretrain \\
        --export plugins/shapes/weights/base

Trains the UNet and the text encoder together on the training compositions only (the held-out
ones are never seen), with logit-normal noise levels, 10% caption dropout (so that classifier-free
guidance works) and an EMA of the weights. The work folder holds a resumable fp32 training state;
``--export`` writes the EMA weights (fp16 safetensors) in the folder layout the model plugin loads.
Rerunning with the same work folder continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .model import build_fresh, encode_text, save_components, unet_velocity
from .world import render_batch, split_scenes

log = logging.getLogger(__name__)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def export(state_path: Path, out: Path) -> None:
    """Write the EMA weights of a training state as an fp16 model folder."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    tokenizer, text_encoder, unet = build_fresh()
    text_encoder.load_state_dict(state["ema_text_encoder"])
    unet.load_state_dict(state["ema_unet"])
    tmp = out.with_name(out.name + ".tmp")
    save_components(tmp, tokenizer, text_encoder.half(), unet.half())
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported step %d to %s", state["step"], out)


def train(work: Path, minutes: float, batch_size: int, lr: float, seed: int, save_every_s: float,
          max_steps: int | None = None) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"
    tokenizer, text_encoder, unet = build_fresh(seed)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    ema_unet, ema_te = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    step, rng = 0, np.random.default_rng(seed)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_te.load_state_dict(state["ema_text_encoder"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed at step %d", step)
    train_scenes, _ = split_scenes()
    captions = [s.caption for s in train_scenes]

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text_encoder": ema_te.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        os.replace(tmp, state_path)

    start = last_save = time.monotonic()
    losses: list[float] = []
    while time.monotonic() - start < minutes * 60 and (max_steps is None or step < max_steps):
        idx = rng.integers(0, len(train_scenes), size=batch_size)
        x0 = torch.from_numpy(render_batch([train_scenes[i] for i in idx], rng)) * 2.0 - 1.0
        prompts = [captions[i] if rng.random() >= 0.1 else "" for i in idx]
        sigma = torch.sigmoid(torch.randn(batch_size))
        noise = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1.0 - s) * x0 + s * noise
        hidden, mask, pooled = encode_text(tokenizer, text_encoder, prompts)
        v = unet_velocity(unet, xt, sigma, hidden, mask, pooled)
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:  # linear warm-up over 200 steps
            group["lr"] = lr * min(1.0, (step + 1) / 200)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_te, text_encoder, decay)
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d loss %.4f (%.0f s)", step, float(np.mean(losses[-50:])), time.monotonic() - start)
        if time.monotonic() - last_save > save_every_s:
            save()
            last_save = time.monotonic()
    save()
    if not math.isfinite(losses[-1] if losses else 0.0):
        raise RuntimeError("pre-training diverged")
    return state_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the resumable training state")
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-clock budget of this call")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=float, default=120.0, help="seconds between state saves")
    parser.add_argument("--export", type=Path, default=None, help="write the EMA weights here when done")
    parser.add_argument("--max-steps", type=int, default=None, help="stop at this optimizer step (total, across resumes)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    state = args.work / "state.pt"
    if args.minutes > 0:
        state = train(args.work, args.minutes, args.batch_size, args.lr, args.seed, args.save_every, args.max_steps)
    if args.export is not None:
        export(state, args.export)


if __name__ == "__main__":
    main()
