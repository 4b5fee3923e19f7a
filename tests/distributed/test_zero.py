"""Several ranks, plain torch or DeepSpeed ZeRO (gloo on the CPU): the same run as one rank, resumable
after a rank is killed, stopped together when one fails, exportable to a plain diffusers model folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo.core.runlog import read_metrics

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
BRANCH = str(ROOT / "recipes" / "shapes_branch.toml")


def args(model_dir, stage: int | None, iterations: int = 2, extra=()) -> list[str]:
    """Overrides for a short run; `stage` None is the plain torch backend, else DeepSpeed's ZeRO stage."""
    sets = [
        f"model.path='{model_dir}'", f"train.iterations={iterations}", "train.prompts_per_iteration=4",
        "sampler.steps=8", "strategy.pruned_depths=[]",  # the recipe prunes depths 11-16, beyond 8 steps
        "train.micro_batch=6", "train.rollout_batch=16", "train.checkpoint_every=1",
        "train.lr=1e-3", "train.optimizer_steps=3", "eval.every=2", "eval.every_minutes=0", "eval.grid_images=4",
        "sampler.noise_block=1",  # white noise, with which the tolerances below were measured
        "prompts.eval_train_samples=0", "prompts.eval_held_out_samples=1",
        "backend={use='torch'}" if stage is None else f"backend={{use='deepspeed', zero_stage={stage}}}", *extra,
    ]
    return [x for s in sets for x in ("--set", s)]


def failure(stderr: str) -> str:
    """What a failed run printed: from a rank's fault report (its stacks, not the list of extension
    modules that ends it) when one died of a fault, else the end."""
    fault = stderr.find("Fatal Python error")
    return stderr[fault:fault + 6000] if fault >= 0 else stderr[-3000:]


def grpo(*argv: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grpo.cli.main", *argv, "--quiet", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, failure(done.stderr)
    return done


def trained(run: Path, iteration: int) -> dict[str, torch.Tensor]:
    from grpo.plugins.backends.deepspeed_backend import DeepSpeedBackend
    from grpo.plugins.backends.plain import TorchBackend

    folder = run / "checkpoints" / f"iter_{iteration:06d}"
    plain = (folder / "trained.safetensors").is_file()
    return (TorchBackend() if plain else DeepSpeedBackend()).read_trained(folder)


def train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if r["kind"] == "train"]


def base_weights(model_dir: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    state = UNet2DConditionModel.from_pretrained(model_dir / "unet").state_dict()
    return {k: state[k].float() for k in like}


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].detach().float().flatten() for k in sorted(state)])


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).detach().abs().max()) for k in a)


@pytest.mark.parametrize("stage,extra", [
    (None, ()),  # plain torch, data-parallel
    (2, ()),
    (3, ()),
    # width pruning pooled over every rank's trees ranks leaves exactly as one rank holding all trees
    (2, ("strategy.width_ratio=0.5", "strategy.width_pooled=true", "strategy.width_pooled_across_ranks=true")),
], ids=["torch", "zero2", "zero3", "zero2-pooled-width"])
def test_two_ranks_train_like_one(tiny_model_dir, tmp_path, stage, extra):
    """Same global batch and seed: 2 ranks give 1 rank's losses, gradient norms and weights.

    Tolerances: losses 1e-3 relative, gradient norms 1e-5 relative (the same sums in another
    order). Weights after 6 AdamW steps of lr 1e-3: the difference between 1 and 2 ranks is under
    1% of how far training moved them (measured 0.1%); AdamW divides each gradient by its own
    running size, so a coordinate whose gradient is near zero turns summation-order noise into a
    step of up to lr: per weight, under a tenth of the largest move.
    """
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"ranks{n}"
        grpo("run", BRANCH, *args(tiny_model_dir, stage, extra=extra), "--out", str(runs[n]), nproc=n)
    one, two = train_records(runs[1]), train_records(runs[2])
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a["reward/shapes-faithfulness/mean"] == b["reward/shapes-faithfulness/mean"]
        assert a["cost/trained_edges"] == b["cost/trained_edges"] and a["cost/leaves"] == b["cost/leaves"] == 32
        assert a["update/optimizer_steps"] == b["update/optimizer_steps"] == 3
        # the loss is a mean of −A·r over zero-mean advantages (about 4e-6 here): after the first step the
        # weights differ by the all-reduce's rounding, which moves it by ~2e-8; the gradient norm is the check
        assert b["update/loss"] == pytest.approx(a["update/loss"], rel=1e-3, abs=5e-8)
        assert b["update/grad_norm"] == pytest.approx(a["update/grad_norm"], rel=1e-5)
        assert b["update/kl"] == pytest.approx(a["update/kl"], rel=1e-3, abs=1e-10)
    assert one[1]["update/kl"] > 0  # the KL term (recipe β 0.5) is part of what agrees
    w1, w2 = trained(runs[1], 2), trained(runs[2], 2)
    w0 = base_weights(tiny_model_dir, w1)
    moved, apart = flat(w1) - flat(w0), flat(w2) - flat(w1)
    assert float(moved.abs().max()) > 1e-3
    assert float(apart.norm()) < 0.01 * float(moved.norm())
    assert float(apart.abs().max()) < 0.1 * float(moved.abs().max())
    # the evaluation is sharded over the ranks and gathered: same images, same scores
    e1 = torch.load(runs[1] / "eval" / "iter_000002.pt", weights_only=True)
    e2 = torch.load(runs[2] / "eval" / "iter_000002.pt", weights_only=True)
    assert e1 == e2


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_zero3_resume_after_a_rank_is_killed(tiny_model_dir, tmp_path):
    """SIGKILL of rank 1 ends the run (non-zero, well within a minute); resuming on 2 ranks then
    gives exactly the uninterrupted run."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_args = ["run", BRANCH, *args(tiny_model_dir, 3, iterations=4)]
    grpo(*run_args, "--out", str(whole), nproc=2)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "grpo.cli.main", *run_args, "--out", str(cut), "--quiet",
                                 "--nproc", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "iter_000002").is_dir():
        assert launcher.poll() is None and time.time() < deadline
        time.sleep(0.05)
    ranks = _children(launcher.pid)
    assert len(ranks) == 2
    rank1 = next(p for p in ranks if "RANK=1\0" in Path(f"/proc/{p}/environ").read_text())
    killed = time.time()
    os.kill(rank1, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode != 0 and time.time() - killed < 60
    assert "rank 1 ended with signal 9" in stderr
    assert all(not Path(f"/proc/{p}").exists() or "zombie" in Path(f"/proc/{p}/status").read_text()
               for p in ranks)
    assert not (cut / "finished.json").exists()

    grpo("run", "--resume", str(cut), nproc=2)
    assert json.loads((cut / "finished.json").read_text())["iterations"] == 4
    a, b = train_records(whole), train_records(cut)
    assert [r["iteration"] for r in b] == [0, 1, 2, 3]
    for x, y in zip(a, b, strict=True):
        for key in ("update/loss", "update/grad_norm", "reward/shapes-faithfulness/mean", "update/kl"):
            assert y[key] == pytest.approx(x[key], rel=1e-6, abs=1e-12), key
    assert max_difference(trained(whole, 4), trained(cut, 4)) < 1e-6

    # a checkpoint of 2 ranks is resumed on 2 ranks only
    again = grpo("run", "--resume", str(cut), nproc=1, check=False)
    assert again.returncode == 2 and "--nproc 2" in again.stderr


def test_export_of_a_zero3_run_loads_in_diffusers_and_samples_the_same(tiny_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    from PIL import Image

    run, out = tmp_path / "run", tmp_path / "export"
    grpo("run", BRANCH, *args(tiny_model_dir, 3), "--out", str(run), nproc=2)
    done = subprocess.run([sys.executable, "-m", "grpo.cli.main", "export", str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, failure(done.stderr)
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    weights = trained(run, 2)
    state = unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert max_difference(weights, base_weights(tiny_model_dir, weights)) > 1e-3  # it did train

    # the exported model, evaluated in one process, draws the run's last evaluation grid (ZeRO-3, 2 ranks)
    from grpo.cli.common import load_recipe
    from grpo.core.engine import Trainer

    recipe, _ = load_recipe(run / "recipe.resolved.toml", [f"model.path='{out}'", "backend={use='torch'}",
                                                           "logging.tensorboard=false"], env=True)
    check = tmp_path / "check"
    trainer = Trainer(recipe, check)
    trainer.setup()
    trainer.evaluator.evaluate(2)
    ours = torch.from_numpy(np.array(Image.open(check / "samples" / "eval_000002.png"))).float()
    theirs = torch.from_numpy(np.array(Image.open(run / "samples" / "eval_000002.png"))).float()
    assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= 1.0
    assert torch.load(check / "eval" / "iter_000002.pt", weights_only=True) == torch.load(
        run / "eval" / "iter_000002.pt", weights_only=True)


def test_torchrun_starts_the_same_run(tiny_model_dir, tmp_path):
    """Ranks started by torchrun (as on several machines) train exactly as `--nproc` ranks do."""
    ours, theirs = tmp_path / "nproc", tmp_path / "torchrun"
    run_args = ["run", BRANCH, *args(tiny_model_dir, 2, iterations=1)]
    grpo(*run_args, "--out", str(ours), nproc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from grpo.core.dist import free_port

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "grpo.cli.main", *run_args, "--out", str(theirs),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, failure(done.stderr)
    a, b = train_records(ours), train_records(theirs)
    for key in ("update/loss", "update/grad_norm", "reward/shapes-faithfulness/mean"):
        assert a[0][key] == b[0][key], key
    assert done.stdout.count("done:") == 1  # rank 0 alone reports


def test_flow_grpo_global_std_on_two_ranks_equals_one(tiny_model_dir, tmp_path):
    """Flow-GRPO divides by one std over every rank's leaves: 2 ranks of 2 trees each give the
    advantages, and so the losses, of 1 rank holding all 4 trees."""
    recipe = str(ROOT / "recipes" / "shapes_flowgrpo.toml")
    sets = [f"model.path='{tiny_model_dir}'", "train.iterations=2", "train.prompts_per_iteration=4",
            "strategy.group_size=4", "sampler.steps=6", "train.micro_batch=8", "train.checkpoint_every=2",
            "train.optimizer_steps=2", "eval.every=0", "backend={use='torch'}"]
    argv = [x for s in sets for x in ("--set", s)]
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"ranks{n}"
        grpo("run", recipe, *argv, "--out", str(runs[n]), nproc=n)
    one, two = train_records(runs[1]), train_records(runs[2])
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a["reward/shapes-faithfulness/mean"] == b["reward/shapes-faithfulness/mean"]
        assert a["cost/leaves"] == b["cost/leaves"] == 16 and a["cost/trained_edges"] == b["cost/trained_edges"]
        # the loss is a mean of −A·r over zero-mean advantages (about 4e-6 here): after the first step the
        # weights differ by the all-reduce's rounding, which moves it by ~2e-8; the gradient norm is the check
        assert b["update/loss"] == pytest.approx(a["update/loss"], rel=1e-3, abs=5e-8)
        assert b["update/grad_norm"] == pytest.approx(a["update/grad_norm"], rel=1e-5)
        assert b["reward/zero_std_ratio"] == a["reward/zero_std_ratio"]


def test_two_ranks_train_an_objective_on_the_leaves_like_one(tiny_model_dir, tmp_path, monkeypatch):
    """An objective of a plugin module that trains on re-noised leaves (the one `grpo plugins new
    objective` writes), on independent chains of a deterministic rollout: every unit is drawn from its
    tree's own stream and the optimizer steps over every rank's units, so 2 ranks train like one."""
    from grpo.cli.scaffold import COMPONENTS

    (tmp_path / "leaf_objective.py").write_text(
        COMPONENTS["objective"].format(cls="WeightedLeaves")
        + "\nfrom grpo.core.hookspecs import hookimpl\n\n\n@hookimpl\ndef grpo_register_objective(registry):\n"
          "    registry.add('weighted-leaves', WeightedLeaves)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    leaf = ("plugins.modules=['leaf_objective']", "strategy.topology={use='chains', group_size=4}",
            "strategy.objective={use='weighted-leaves', draws=2}", "sampler={use='ode', steps=8}")
    sets = args(tiny_model_dir, None, extra=leaf)
    sets = [x for i, x in enumerate(sets) if "pruned_depths" not in x and "pruned_depths" not in sets[min(i + 1, len(sets) - 1)]]
    # the family's recipe without the options of the parts replaced here (the fan's and the clipped ratio's)
    lines = (ROOT / "recipes" / "shapes_dance.toml").read_text().splitlines()
    recipe = tmp_path / "leaves.toml"
    recipe.write_text("\n".join(x for x in lines if not x.startswith(("group_size", "clip_range", "kl_beta"))) + "\n")
    runs = {}
    for n in (1, 2):
        runs[n] = tmp_path / f"ranks{n}"
        grpo("run", str(recipe), *sets, "--out", str(runs[n]), nproc=n)
    one, two = train_records(runs[1]), train_records(runs[2])
    for a, b in zip(one, two, strict=True):
        assert a["reward/shapes-faithfulness/mean"] == b["reward/shapes-faithfulness/mean"]
        assert a["update/trained_samples"] == b["update/trained_samples"] == 4 * 4 * 2
        assert a["update/optimizer_steps"] == b["update/optimizer_steps"] == 3
        assert b["update/loss"] == pytest.approx(a["update/loss"], rel=1e-4, abs=1e-8)
        assert b["update/grad_norm"] == pytest.approx(a["update/grad_norm"], rel=1e-4)
    assert one[1]["update/grad_norm"] > 0
    w1, w2 = trained(runs[1], 2), trained(runs[2], 2)
    moved = flat(w1) - flat(base_weights(tiny_model_dir, w1))
    assert float((flat(w2) - flat(w1)).norm()) < 0.01 * float(moved.norm())
