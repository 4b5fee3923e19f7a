"""End-to-end runs of the shapes recipe on a tiny random model, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.runlog import read_metrics
from grpo.core.tomlfile import tomllib

ROOT = Path(__file__).resolve().parents[2]
DANCE = str(ROOT / "recipes" / "shapes_dance.toml")


def small(model_dir, iterations=2, extra=()):
    return [
        "--set", f"model.path='{model_dir}'",
        "--set", f"train.iterations={iterations}",
        "--set", "train.prompts_per_iteration=2",
        "--set", "strategy.group_size=3",
        "--set", "strategy.timestep_fraction=0.5",
        "--set", "strategy.step_window=[]",
        "--set", "sampler.steps=4",
        "--set", "train.micro_batch=5",
        "--set", "train.rollout_batch=4",
        "--set", "train.checkpoint_every=1",
        "--set", "eval.every=2",
        "--set", "eval.grid_images=4",
        "--set", "prompts.eval_train_samples=0",
        "--set", "prompts.eval_held_out_samples=1",
        *extra,
    ]


def test_run_writes_every_output(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", DANCE, *small(tiny_model_dir), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads((out / "recipe.resolved.toml").read_text())
    assert resolved["train"]["iterations"] == 2 and resolved["sampler"]["eta"] == 0.5
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "samples" / "eval_000000.png").is_file() and (out / "samples" / "eval_000002.png").is_file()
    assert (out / "checkpoints" / "iter_000002" / "trained.safetensors").is_file()
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["backend"] == {"device": "cpu", "process_group": "none"} and runtime["ranks"] == 1
    assert runtime["torch"] == __import__("torch").__version__ and runtime["tf32_matmul"] is False
    records = read_metrics(out)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [0, 1]
    first = train[0]
    assert first["cost/leaves"] == 6 and first["cost/trained_edges"] == 2 * 3 * 2  # ⌈0.5·4⌉ steps per chain
    assert first["cost/rollout_forwards"] == 2 * (1 + 3 * 3)
    # one optimizer step on fresh rollouts: the very first ratios are exactly on-policy
    assert abs(first["update/ratio_mean"] - 1) < 1e-3
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [0, 2]
    assert "held-out/shapes-faithfulness/ci95" in evals[0]


def test_time_budget_ends_the_run_with_a_checkpoint_and_an_evaluation(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", DANCE, *small(tiny_model_dir, 50, ["--set", "train.time_budget=1e-6",
                                                       "--set", "train.checkpoint_every=10"])]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    finished = json.loads((out / "finished.json").read_text())
    assert finished["iterations"] == 1 and finished["reason"] == "time_budget"
    assert (out / "checkpoints" / "iter_000001").is_dir()
    records = read_metrics(out)
    assert [r["iteration"] for r in records if r["kind"] == "eval"] == [0, 1]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 1 and train[0]["time/elapsed"] == train[0]["time/iteration"] > 0
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [p["iteration"] for p in prompts] == [0] and len(prompts[0]["prompts"]) == 2
    # resuming a run that spent its budget trains nothing more
    again = CliRunner().invoke(app, ["run", "--resume", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "finished.json").read_text())["iterations"] == 1
    assert len([r for r in read_metrics(out) if r["kind"] == "train"]) == 1


@pytest.mark.parametrize("ds", ["zero_stage=0", "zero_stage=2", "zero_stage=3",
                                "preset='zero3-offload', gradient_checkpointing=true"])
def test_deepspeed_backend_matches_torch_backend(tiny_model_dir, tmp_path, ds):
    """ZeRO in one process takes the same optimizer steps as plain torch, KL term included, over
    several micro-batches per optimizer step (ZeRO-3 must add them up, not keep the last)."""
    outs = {}
    for backend in ("torch", "deepspeed"):
        out = tmp_path / backend
        table = f"{{use='{backend}'}}" if backend == "torch" else f"{{use='deepspeed', {ds}}}"
        extra = ["--set", f"backend={table}", "--set", "eval.every=0", "--set", "train.optimizer_steps=2",
                 "--set", "strategy.kl_beta=0.5", "--set", "train.micro_batch=2", "--set", "train.lr=1e-3"]
        result = CliRunner().invoke(app, ["run", DANCE, *small(tiny_model_dir, 2, extra), "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        outs[backend] = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert outs["torch"][1]["update/grad_norm"] > 0 and outs["torch"][1]["update/kl"] > 0
    for a, b in zip(outs["torch"], outs["deepspeed"], strict=True):
        assert a["reward/shapes-faithfulness/mean"] == pytest.approx(b["reward/shapes-faithfulness/mean"], abs=1e-6)
        assert a["update/loss"] == pytest.approx(b["update/loss"], rel=1e-3, abs=1e-7)
        assert a["update/grad_norm"] == pytest.approx(b["update/grad_norm"], rel=1e-4)
        assert a["update/kl"] == pytest.approx(b["update/kl"], rel=1e-3, abs=1e-9)


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records if r["kind"] in ("train", "eval")]


@pytest.mark.slow
def test_sigkill_and_resume_match_an_uninterrupted_run(tiny_model_dir, tmp_path):
    extra = ["--set", "sampler.steps=8", "--set", "train.prompts_per_iteration=4"]
    args = ["run", DANCE, *small(tiny_model_dir, 5, extra)]
    whole = tmp_path / "whole"
    result = CliRunner().invoke(app, [*args, "--out", str(whole), "--quiet"])
    assert result.exit_code == 0, result.output

    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "grpo.cli.main", *args, "--out", str(cut), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "iter_000002").is_dir():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # now inside iteration 2 (each takes about a second)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoints" / "iter_000005").exists()
    resumed = subprocess.run([sys.executable, "-m", "grpo.cli.main", "run", "--resume", str(cut), "--quiet"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _comparable(read_metrics(whole)), _comparable(read_metrics(cut))
    assert [(r["kind"], r["iteration"]) for r in a] == [(r["kind"], r["iteration"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)
    assert (whole / "prompts.jsonl").read_text() == (cut / "prompts.jsonl").read_text()


def test_kl_penalty_with_lora(tiny_model_dir, tmp_path):
    out = tmp_path / "kl"
    extra = ["--set", "strategy.kl_beta=0.1", "--set", "sampler.noise_block=1", "--set", "model.lora_rank=2", "--set", "eval.every=0",
             "--set", "train.lr=1e-2", "--set", "reward=[{use='jpeg-compressibility'}]"]
    result = CliRunner().invoke(app, ["run", DANCE, *small(tiny_model_dir, 2, extra), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    train = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert train[1]["update/kl"] > train[0]["update/kl"] >= 0.0  # the policy drifts from the base
    assert (out / "checkpoints" / "iter_000002" / "trained.safetensors").is_file()


@pytest.mark.slow
def test_default_recipe_two_iterations_with_the_bundled_model(tmp_path):
    """The acceptance command: the shipped recipe and weights, two iterations, with a fifth of the
    evaluation set (every training prompt once, every held-out one four times: 210 images in place of
    1,050, which would take most of the test's time)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "grpo.cli.main", "run", DANCE, "--set", "train.iterations=2",
                           "--set", "prompts.eval_train_samples=1", "--set", "prompts.eval_held_out_samples=4",
                           "--out", str(out), "--quiet"], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert (out / "recipe.resolved.toml").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "samples" / "eval_000002.png").is_file()
    assert (out / "checkpoints" / "iter_000002" / "engine.json").is_file()
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    base = evals[0]
    # the bundled base model draws the right background and colour nearly always
    assert base["train/shapes-faithfulness/background"] > 0.9
    assert base["train/shapes-faithfulness/colour"] > 0.8


@pytest.mark.slow
def test_training_raises_a_reward_the_policy_can_move(tmp_path):
    """End to end, the update moves the policy towards higher reward: the bundled model trained on
    one prompt for JPEG compressibility (a reward whose gradient direction a handful of groups
    resolves) gets clearly more compressible within ten iterations; a sign error anywhere between
    rewards, advantages, edges and the loss would make it less so. Measured: −1.22 → −0.90."""
    prompts = tmp_path / "one.txt"
    prompts.write_text("one red square on a black background\n")
    out = tmp_path / "run"
    sets = [f"prompts={{use='file', path='{prompts}', eval_count=0}}", "train.prompts_per_iteration=1",
            "strategy.group_size=16", "train.lr=1e-4", "strategy.kl_beta=0.0", "train.iterations=10",
            "eval.every=0", "train.checkpoint_every=100", "reward=[{use='jpeg-compressibility'}]",
            "sampler.noise_block=1", "strategy.step_window=[0,10]", "strategy.timestep_fraction=0.8"]
    result = CliRunner().invoke(app, ["run", DANCE, *[x for s in sets for x in ("--set", s)], "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    reward = [r["reward/jpeg-compressibility/mean"] for r in read_metrics(out) if r["kind"] == "train"]
    assert len(reward) == 10
    first, last = sum(reward[:3]) / 3, sum(reward[-3:]) / 3
    assert last - first > 0.15, reward


def test_evaluations_at_training_time_marks_agree_for_a_fast_and_a_slow_strategy(tiny_model_dir, tmp_path):
    """``eval.every_minutes``: each run is evaluated right after the iteration whose training clock first
    reaches each mark, so a strategy with iterations several times slower is evaluated at the same marks."""
    period, budget = 0.04, 0.13  # minutes: marks at 2.4, 4.8 and 7.2 s of training; the run ends at 7.8 s
    runs = {}
    for name, extra in (("fast", ["--set", "strategy.group_size=2"]),
                        ("slow", ["--set", "strategy.group_size=6"])):
        out = tmp_path / name
        args = small(tiny_model_dir, iterations=1000, extra=[*extra, "--set", f"eval.every_minutes={period}",
                                                              "--set", f"train.time_budget={budget}"])
        result = CliRunner().invoke(app, ["run", DANCE, *args, "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        runs[name] = read_metrics(out)
    iterations = {}
    for name, records in runs.items():
        train = {r["iteration"]: r["time/elapsed"] for r in records if r["kind"] == "train"}
        iterations[name] = len(train)
        assert max(b - a for a, b in zip([0.0, *train.values()], train.values(), strict=False)) < period * 60
        marked = [r for r in records if r["kind"] == "eval" and "time/mark" in r]
        assert [r["time/mark"] for r in marked] == pytest.approx([0.0, period, 2 * period, 3 * period])
        for r in marked[1:]:
            it = r["iteration"]  # evaluated after `it` iterations: the first whose clock reached the mark
            assert train[it - 1] >= r["time/mark"] * 60 > train.get(it - 2, 0.0)
            assert r["time/training"] == pytest.approx(train[it - 1])
    # the two strategies do run at different speeds (about 3× apart alone; a busy machine narrows it)
    assert iterations["fast"] > iterations["slow"]
