"""A run's record can be trusted: data-only reads of run directories, one writer per run directory,
no silent non-finite runs, resume that refuses or records each change, damaged checkpoints that fall
back, a full disk said as such, and interrupts that say how to go on."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[2]
DANCE = str(ROOT / "recipes" / "shapes_dance.toml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def small(model_dir, iterations=2, extra=()):
    return ["--set", f"model.path='{model_dir}'", "--set", f"train.iterations={iterations}",
            "--set", "train.prompts_per_iteration=2", "--set", "strategy.group_size=3",
            "--set", "strategy.timestep_fraction=0.5", "--set", "strategy.step_window=[]",
            "--set", "sampler.steps=4", "--set", "train.micro_batch=5", "--set", "train.rollout_batch=4",
            "--set", "train.checkpoint_every=1", "--set", "train.keep_checkpoints=2", "--set", "eval.every=1",
            "--set", "eval.grid_images=4", "--set", "prompts.eval_train_samples=0",
            "--set", "prompts.eval_held_out_samples=1", *extra]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def grpo(*args, timeout=300):
    """`grpo ARGS` in its own process: its exit code and everything it printed."""
    done = subprocess.run([sys.executable, "-m", "grpo.cli.main", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    """A finished two-iteration run that kept the checkpoints after iterations 1 and 2."""
    out = tmp_path_factory.mktemp("record") / "run"
    code, text = invoke("run", DANCE, *small(tiny_model_dir), "--out", out, "--quiet")
    assert code == 0, text
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


class Payload:
    """A pickle that, when unpickled with code allowed, creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant(path, marker):
    torch.save({"held-out": {"shapes-faithfulness": [0.5]}, "x": Payload(marker)}, path)


# -- 1. no code from run directories ------------------------------------------------------------------

def test_a_crafted_pickle_in_a_run_directory_runs_nothing_under_report_or_compare(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    scores = run_copy / "eval" / "iter_000002.pt"
    plant(scores, marker)
    code, out = invoke("report", run_copy)
    assert code == 2 and "iter_000002.pt" in out and "not loaded" in out
    code, out = invoke("compare", "--from", run_copy, "--out", tmp_path / "cmp")
    assert code == 2 and "iter_000002.pt" in out
    assert not marker.exists()
    torch.load(scores, weights_only=False)  # the payload is real: a load that allows code runs it
    assert marker.exists()


def test_a_crafted_optimizer_state_runs_nothing_on_resume(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, run_copy / "checkpoints" / "iter_000002" / "optimizer.pt")
    code, out = invoke("run", "--resume", run_copy, "--set", "train.iterations=3", "--quiet")
    assert code == 2 and "optimizer.pt" in out
    assert not marker.exists()


def test_deepspeed_checkpoints_are_read_as_data_and_a_crafted_one_runs_nothing(tiny_model_dir, tmp_path):
    """DeepSpeed's own readers unpickle with code allowed; the backend checks its files first and reads
    them with data only. A real ZeRO-2 bf16 checkpoint (loss scaler, stage enum, fragment addresses)
    resumes and exports; one with a payload in its optimizer states is refused, naming the file."""
    out, marker = tmp_path / "run", tmp_path / "pwned"
    ds = ["--set", "backend={use='deepspeed', zero_stage=2, precision='bf16'}", "--set", "eval.every=0"]
    code, text = invoke("run", DANCE, *small(tiny_model_dir, 1, ds), "--out", out, "--quiet")
    assert code == 0, text
    code, text = invoke("run", "--resume", out, "--set", "train.iterations=2", "--quiet")
    assert code == 0, text
    code, text = invoke("export", out, "--out", tmp_path / "exported")
    assert code == 0, text
    states = next((out / "checkpoints" / "iter_000002" / "backend").glob("*optim_states.pt"))
    saved = torch.load(states, weights_only=False)
    saved["x"] = Payload(marker)
    torch.save(saved, states)
    code, text = invoke("run", "--resume", out, "--set", "train.iterations=3", "--quiet")
    assert code == 2 and states.name in text and "not loaded" in text, text
    code, text = invoke("export", out, "--out", tmp_path / "exported-again")
    assert code == 2 and states.name in text, text
    assert not marker.exists()
    torch.load(states, weights_only=False)  # the payload is real: a load that allows code runs it
    assert marker.exists()


def test_a_zero_stage_0_run_exports_the_weights_plain_torch_trains(tiny_model_dir, tmp_path):
    """Stage 0 keeps no ZeRO partitions for DeepSpeed's converter: export reads the module's weights, the
    same (fp32) as the torch backend's after the same optimizer steps."""
    from diffusers import UNet2DConditionModel

    weights = {}
    for name, table in (("torch", "{use='torch'}"), ("deepspeed", "{use='deepspeed', zero_stage=0}")):
        out = tmp_path / name
        extra = ["--set", f"backend={table}", "--set", "eval.every=0", "--set", "train.lr=1e-3"]
        code, text = invoke("run", DANCE, *small(tiny_model_dir, 1, extra), "--out", out, "--quiet")
        assert code == 0, text
        code, text = invoke("export", out, "--out", tmp_path / f"{name}-exported")
        assert code == 0, text
        weights[name] = UNet2DConditionModel.from_pretrained(tmp_path / f"{name}-exported" / "unet").state_dict()
    base = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").state_dict()
    moved = max(float((weights["torch"][k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-4  # the step changed the weights, so equal exports are not the base twice
    for k, v in weights["torch"].items():
        torch.testing.assert_close(weights["deepspeed"][k], v, rtol=1e-4, atol=1e-6)


# -- 2. one writer per run directory ------------------------------------------------------------------

def _wait_for(path, proc, seconds=300):
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, "the run ended early"
        assert time.time() < deadline
        time.sleep(0.05)


def test_a_second_writer_is_refused_and_the_first_record_stays_intact(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "grpo.cli.main", "run", DANCE, *small(tiny_model_dir, 40),
                              "--set", "eval.every=20", "--out", str(out), "--quiet"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(out / "checkpoints" / "iter_000001", first)
    code, text = grpo("run", "--resume", out, "--quiet")
    assert code == 2 and f"PID {first.pid}" in text and "Traceback" not in text
    assert first.wait(timeout=300) == 0, first.stdout.read().decode()
    records = read_metrics(out)
    assert [r["iteration"] for r in records if r["kind"] == "train"] == list(range(40))
    prompts = [json.loads(line)["iteration"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert prompts == list(range(40))


def test_sigterm_to_compare_stops_its_runs_and_says_how_to_go_on(tiny_model_dir, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.Popen([sys.executable, "-m", "grpo.cli.main", "compare", DANCE, "--out", str(out), "--quiet",
                             *small(tiny_model_dir, 50)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = out / "runs" / "shapes_dance-seed0"
    _wait_for(run / "checkpoints" / "iter_000001", proc)
    child = int((run / ".lock").read_text())
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "same command continues" in text, text
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the run ended with the comparison
    log = (out / "logs" / "shapes_dance-seed0.log").read_text()
    assert "continue with: grpo run --resume" in log


# -- 3. no silent non-finite runs ---------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["train.lr=inf", "strategy.kl_beta=inf", "sampler.eta=inf", "train.lr=nan",
                                     "strategy.clip_range=-inf", "eval.every_minutes=inf"])
def test_non_finite_settings_are_refused(setting):
    code, out = invoke("validate", DANCE, "--set", setting)
    assert code == 2 and setting.split("=")[0] in out and "not a finite number" in out


def test_a_non_finite_timeout_of_the_http_reward_is_refused():
    table = 'reward=[{use="http", url="http://127.0.0.1:9/score", timeout=inf}]'
    code, out = invoke("validate", DANCE, "--set", table)
    assert code == 2 and "reward.0.timeout" in out and "not a finite number" in out


def test_weights_that_turn_non_finite_stop_the_run_and_keep_the_last_finite_checkpoint(tiny_model_dir, tmp_path,
                                                                                       monkeypatch):
    """A fault in the update (here: the optimizer writes a nan into a weight in iteration 1)."""
    steps = {"n": 0}
    real_step = torch.optim.AdamW.step

    def faulty_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", faulty_step)
    run = tmp_path / "run"
    code, out = invoke("run", DANCE, *small(tiny_model_dir, 3), "--set", "train.optimizer_steps=1", "--out", run,
                       "--quiet")
    assert code == 2 and "became inf or nan in the update of iteration 1" in out
    assert "checkpoint after iteration 1 holds the last finite weights" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001"]
    weights = load_file(str(run / "checkpoints" / "iter_000001" / "trained.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert [r["iteration"] for r in read_metrics(run) if r["kind"] == "train"] == [0]


def test_export_refuses_non_finite_weights(run_copy, tmp_path):
    path = run_copy / "checkpoints" / "iter_000002" / "trained.safetensors"
    weights = load_file(str(path))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("inf")
    save_file(weights, str(path))
    code, out = invoke("export", run_copy, "--out", tmp_path / "model", "--no-ema")
    assert code == 2 and "inf or nan" in out and name in out
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


# -- 4. resume tells the truth ------------------------------------------------------------------------

def test_resume_refuses_a_changed_setting_and_records_an_allowed_one(run_copy):
    code, out = invoke("run", "--resume", run_copy, "--set", "train.lr=0.5", "--quiet")
    assert code == 2 and "train.lr" in out and "already trained" in out
    code, out = invoke("run", "--resume", run_copy, "--set", "train.iterations=3", "--quiet")
    assert code == 0, out
    assert "iterations = 3" in (run_copy / "recipe.resolved.toml").read_text()
    resumed = [r for r in read_metrics(run_copy) if r["kind"] == "resume"]
    assert resumed == [{"iteration": 2, "kind": "resume", "from_iteration": 2,
                        "changed": {"train.iterations": [2, 3]}, "damaged_checkpoints": []}]
    assert [r["iteration"] for r in read_metrics(run_copy) if r["kind"] == "train"] == [0, 1, 2]


def test_an_edited_resolved_recipe_is_refused(run_copy):
    resolved = run_copy / "recipe.resolved.toml"
    text = resolved.read_text()
    assert "clip_range = 0.001\n" in text
    resolved.write_text(text.replace("clip_range = 0.001\n", "clip_range = 0.2\n", 1))
    code, out = invoke("run", "--resume", run_copy, "--set", "train.iterations=3", "--quiet")
    assert code == 2 and "clip_range" in out and "checkpoint after iteration 2" in out


def test_resuming_without_a_checkpoint_says_it_starts_from_iteration_0(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    code, out = grpo("run", "--resume", run_copy, "--quiet")
    assert code == 0 and "starts again from iteration 0" in out


# -- 5. damaged files fall back -----------------------------------------------------------------------

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage,file", [
    (_truncate, "trained.safetensors"),
    (lambda p: p.write_bytes(b""), "trained.safetensors"),
    (lambda p: p.write_bytes(b""), "optimizer.pt"),
    (_truncate, "optimizer.pt"),
    (lambda p: p.write_text('{"iteration": '), "engine.json"),
])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(run_copy, damage, file):
    damage(run_copy / "checkpoints" / "iter_000002" / file)
    code, out = grpo("run", "--resume", run_copy, "--quiet")
    assert code == 0 and "iter_000002" in out and file in out and "Traceback" not in out, out
    assert (run_copy / "checkpoints" / "damaged-iter_000002").is_dir()
    assert (run_copy / "checkpoints" / "iter_000002" / "engine.json").is_file()  # made again from iteration 1
    resumed = [r for r in read_metrics(run_copy) if r["kind"] == "resume"]
    assert resumed[-1]["from_iteration"] == 1 and resumed[-1]["damaged_checkpoints"] == ["iter_000002"]


def test_every_checkpoint_damaged_is_one_message_naming_the_file(run_copy):
    for folder in (run_copy / "checkpoints").iterdir():
        (folder / "optimizer.pt").write_bytes(b"")
    code, out = grpo("run", "--resume", run_copy, "--quiet")
    assert code == 2 and "no complete checkpoint" in out and "iter_000002/optimizer.pt is empty" in out
    assert "Traceback" not in out
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["iter_000001", "iter_000002"]


def test_a_partial_last_metrics_line_is_dropped_on_resume_and_skipped_by_report(run_copy):
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"iteration": 2, "kind": "tr')
    code, out = grpo("report", run_copy)
    assert code == 0 and "metrics.jsonl: line" in out and "skipped" in out, out
    code, out = grpo("run", "--resume", run_copy, "--set", "train.iterations=3", "--quiet")
    assert code == 0 and "not a complete record" in out
    assert all(json.loads(line) for line in metrics.read_text().splitlines())


def test_export_of_a_damaged_checkpoint_names_the_file(run_copy, tmp_path):
    _truncate(run_copy / "checkpoints" / "iter_000002" / "trained.safetensors")
    code, out = invoke("export", run_copy, "--out", tmp_path / "model")
    assert code == 2 and "trained.safetensors is truncated" in out and "--iteration" in out and "1" in out


# -- 6. a full disk is said as such -------------------------------------------------------------------

def test_a_full_disk_while_checkpointing_is_one_message_and_keeps_the_previous_checkpoint(tiny_model_dir, tmp_path,
                                                                                         monkeypatch):
    import grpo.plugins.backends.plain as plain

    calls = {"n": 0}
    real = plain.save_file

    def full_disk(state, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, path, *args, **kwargs)

    monkeypatch.setattr(plain, "save_file", full_disk)
    run = tmp_path / "run"
    code, out = invoke("run", DANCE, *small(tiny_model_dir, 3), "--out", run, "--quiet")
    assert code == 2 and "no space left on device" in out and str(run) in out
    assert "checkpoint after iteration 1 is intact" in out and "--resume" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001"]  # no partial folder


# -- 9. interrupts say how to go on -------------------------------------------------------------------

def _sigint_by_default():
    """A child of a shell's background job starts with SIGINT ignored, and Python then never turns it into
    KeyboardInterrupt: the run under test gets SIGINT as a terminal's Ctrl-C would deliver it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                           (signal.SIGINT, 130, "interrupted")])
def test_an_interrupted_run_says_where_it_can_continue(tiny_model_dir, tmp_path, sig, code, word):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "grpo.cli.main", "run", DANCE, *small(tiny_model_dir, 50),
                             "--out", str(out), "--quiet"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_sigint_by_default)
    _wait_for(out / "checkpoints" / "iter_000001", proc)
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if word in line]
    assert len(lines) == 1 and "the last checkpoint is after iteration" in lines[0]
    assert f"grpo run --resume {out}" in lines[0]


# -- 8. user mistakes: one message, exit 2, nothing left behind, before anything heavy ---------------

def _quick(code, out, started, *words):
    assert code == 2 and "Traceback" not in out, out
    for word in words:
        assert word in out, out
    assert time.monotonic() - started < 20  # said before the model is built and a rollout runs


@pytest.mark.parametrize("case", ["file", "under a file", "unwritable"])
def test_out_that_cannot_be_a_run_directory(tmp_path, case):
    (tmp_path / "f").write_text("x")
    out, words = {"file": (tmp_path / "f", ["is a file"]),
                  "under a file": (tmp_path / "f" / "run", ["which is a file"]),
                  "unwritable": (Path("/proc/grpo-run"), ["cannot write the run directory"])}[case]
    started = time.monotonic()
    code, text = invoke("run", DANCE, "--out", out)
    _quick(code, text, started, "--out", *words)
    assert (tmp_path / "f").read_text() == "x"


def test_a_read_only_run_directory_is_said_before_anything_runs(run_copy):
    if os.geteuid() == 0:  # root writes anywhere: make the folder immutable instead
        if subprocess.run(["chattr", "+i", str(run_copy)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
    else:
        run_copy.chmod(0o555)
    try:
        started = time.monotonic()
        code, out = invoke("run", "--resume", run_copy, "--set", "train.iterations=3")
        _quick(code, out, started, "cannot write the run directory", "--resume")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(run_copy)], check=True)
        run_copy.chmod(0o755)


@pytest.mark.parametrize("setting", ["train.seed=18446744073709551616", "eval.seed=-1"])
def test_seeds_beyond_64_bits_are_refused(setting):
    code, out = invoke("validate", DANCE, "--set", setting)
    assert code == 2 and setting.split("=")[0] in out and "Traceback" not in out


@pytest.mark.parametrize("value", ["{b = " * 400 + "1" + "}" * 400, "[" * 400 + "]" * 400])
def test_a_recipe_nested_400_levels_deep(tmp_path, value):
    recipe = tmp_path / "deep.toml"
    recipe.write_text(Path(DANCE).read_text() + f"\n[extra]\na = {value}\n")
    code, out = grpo("validate", recipe)
    assert code == 2 and "Traceback" not in out and ("deep.toml" in out or "unknown table [extra]" in out), out


def _prompt_file_run(tmp_path, path):
    started = time.monotonic()
    run = tmp_path / "r"
    code, out = invoke("run", DANCE, "--set", f"prompts={{use='file', path='{path}'}}", "--out", run)
    return code, out, started, run


def test_a_prompt_file_that_is_not_utf8(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"two red circles on a white background\n" + b"\xff\xfe caf\xe9\n")
    code, out, started, run = _prompt_file_run(tmp_path, prompts)
    _quick(code, out, started, "prompts.path", "not UTF-8", "0xff")
    assert "plugin error" not in out and not run.exists()


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_a_pipe_as_prompt_file(tmp_path, kind):
    path = tmp_path / "prompts"
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    code, out, started, run = _prompt_file_run(tmp_path, path)
    _quick(code, out, started, "prompts.path", "a folder" if kind == "folder" else "not a regular file")
    assert "does not exist" not in out and not run.exists()
    import tomli_w

    from grpo.core.tomlfile import load_toml

    data = load_toml(DANCE)
    data["prompts"] = {"use": "file", "path": str(path)}
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tomli_w.dumps(data))
    code, out = invoke("doctor", recipe)
    assert code != 0 and ("a folder, not a file" if kind == "folder" else "not a regular file") in out, out


def test_a_prompt_the_shapes_world_cannot_draw_is_found_before_the_model_is_built(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("two red circles on a white background\n" + "a cat " * 200_000 + "\n")
    code, out, started, run = _prompt_file_run(tmp_path, prompts)
    _quick(code, out, started, "prompt 2 of 2", "is not a shapes caption", "(1199999 characters)")
    assert len(out) < 2000 and not run.exists()


def test_a_step_window_beyond_the_steps_is_refused():
    for command in ("validate", "plan"):
        code, out = invoke(command, DANCE, "--set", "sampler.steps=4")
        assert code == 2 and "step_window [0, 6] reaches beyond the sampler's 4 steps" in out, out
