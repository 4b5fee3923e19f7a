"""Every user error: one clear message naming the place and the fix, exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo.cli.common import load_recipe
from grpo.cli.main import app
from grpo.core.engine import check_world
from grpo.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
DANCE = str(ROOT / "recipes" / "shapes_dance.toml")
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output  # stdout and stderr together


@pytest.mark.parametrize(
    "args,expected",
    [
        (("--set", "strategy.gruop_size=4"), ["strategy.gruop_size", "unknown key", "did you mean 'group_size'"]),
        (("--set", "strategy.use=dancegrpoo"), ["strategy.use", "unknown strategy 'dancegrpoo'", "did you mean 'dancegrpo'"]),
        (("--set", "train.iterations='many'"), ["train.iterations", "expected an integer"]),
        (("--set", "train.lr=-1.0"), ["train.lr", "must be > 0"]),
        (("--set", 'sampler={use="ode", steps=16}'), ["sampler.use", "deterministic"]),
        (("--set", "trian.lr=1.0"), ["unknown table 'trian'", "did you mean"]),
        (("--set", "train.accumulation_unit='edge'"), ["train.accumulation_unit", "did you mean 'edges'"]),
        (("--set", "reward.0.use=shapes-faithfullness"), ["reward.0.use", "did you mean 'shapes-faithfulness'"]),
        (("--set", "noequals"), ["is not KEY=VALUE"]),
        # the keys every reward takes are among the valid ones the hint lists
        (("--set", "reward.0.wieght=2"), ["reward.0.wieght", "did you mean 'weight'", "name", "weight"]),
    ],
)
def test_validate_reports_bad_recipe_values(args, expected):
    code, out = invoke("validate", DANCE, *args)
    assert code == 2, out
    for text in expected:
        assert text in out, out
    assert "Traceback" not in out


def test_several_problems_are_reported_together():
    code, out = invoke("validate", DANCE, "--set", "train.lr=-1.0", "--set", "strategy.gruop_size=4")
    assert code == 2 and "2 problems" in out and "train.lr" in out and "strategy.gruop_size" in out


def test_missing_recipe_file():
    code, out = invoke("validate", "recipes/nope.toml")
    assert code == 2 and "does not exist" in out


def test_invalid_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nuse = 1")
    code, out = invoke("validate", str(bad))
    assert code == 2 and "not valid TOML" in out


def test_missing_environment_variable_at_run_but_not_validate(tmp_path):
    code, out = invoke("validate", DANCE, "--set", "model.path='${GRPO_TEST_UNSET_VAR}'")
    assert code == 0, out
    code, out = invoke("run", DANCE, "--set", "model.path='${GRPO_TEST_UNSET_VAR}'", "--out", str(tmp_path / "r"))
    assert code == 2 and "GRPO_TEST_UNSET_VAR" in out and "model.path" in out
    assert not (tmp_path / "r").exists()


def test_missing_weights_folder(tmp_path):
    code, out = invoke("run", DANCE, "--set", f"model.path='{tmp_path / 'none'}'", "--out", str(tmp_path / "r"))
    assert code == 2 and "model.path" in out and "does not exist" in out and "pretrain" in out
    (tmp_path / "empty").mkdir()
    code, out = invoke("run", DANCE, "--set", f"model.path='{tmp_path / 'empty'}'", "--out", str(tmp_path / "r"))
    assert code == 2 and "model.path" in out and "lacks" in out


def test_noise_block_that_does_not_tile_the_latent(tmp_path):
    code, out = invoke("validate", DANCE, "--set", "sampler.noise_block=0")
    assert code == 2 and "sampler.noise_block" in out and "must be >= 1" in out, out
    for command in (["validate", DANCE], ["run", DANCE, "--out", str(tmp_path / "r")]):  # known without weights
        code, out = invoke(*command, "--set", "sampler.noise_block=5")
        assert code == 2 and "sampler.noise_block" in out and "32×32" in out and "1, 2, 4, 8, 16, 32" in out, out
    assert "Traceback" not in out and not (tmp_path / "r").exists()


def test_malformed_prompt_file(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n{oops\n')
    table = f"prompts={{use='file', path='{prompts}'}}"
    code, out = invoke("run", DANCE, "--set", table, "--set", "prompts.eval_held_out_samples=1",
                       "--out", str(tmp_path / "r"))
    assert code == 2 and "prompts.eval_held_out_samples" in out  # not a key of the file source
    code, out = invoke("run", DANCE, "--set", table, "--out", str(tmp_path / "r"))
    assert code == 2 and "p.jsonl:2" in out and "not valid JSON" in out
    assert not (tmp_path / "r").exists()


def test_existing_run_directory_is_never_overwritten(tmp_path):
    out_dir = tmp_path / "r"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    code, out = invoke("run", DANCE, "--out", str(out_dir))
    assert code == 2 and "--resume" in out
    assert (out_dir / "keep.txt").read_text() == "precious"


def test_resume_of_a_non_run_directory(tmp_path):
    code, out = invoke("run", "--resume", str(tmp_path))
    assert code == 2 and "not a run directory" in out


def test_unknown_plugin_in_show():
    code, out = invoke("plugins", "show", "dancegrp")
    assert code == 2 and "did you mean 'dancegrpo'" in out


def test_real_process_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "grpo.cli.main", "validate", DANCE, "--set", "strategy.group_size=1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "strategy.group_size" in proc.stderr and "must be >= 2" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "sets,expected",
    [
        (["backend={use='deepspeed', zero_stage=2, offload_param=true}"], ["backend.offload_param", "stage 3"]),
        (["backend={use='deepspeed', zero_stage=0, offload_optimizer=true}"], ["backend.offload_optimizer"]),
        (["backend={use='deepspeed', precision='fp16', device='cpu'}"], ["backend.precision", "bf16"]),
        (["backend={use='deepspeed', preset='zero4'}"], ["backend.preset", "did you mean 'zero3'"]),
        (["backend={use='deepspeed', zero_stage=4}"], ["backend.zero_stage", "<= 3"]),
    ],
)
def test_bad_deepspeed_settings(sets, expected):
    code, out = invoke("validate", DANCE, *[x for s in sets for x in ("--set", s)])
    assert code == 2, out
    for text in expected:
        assert text in out, out


def test_repeated_ema_blends_on_the_plain_schedule_are_found_by_validate():
    code, out = invoke("validate", DANCE, "--set", "train.ema_decay=0.9", "--set", "train.ema_repeats=2")
    assert code == 2 and "train.ema_repeats" in out and "ema_schedule" in out, out
    code, out = invoke("validate", DANCE, "--set", "train.ema_decay=0.9", "--set", "train.ema_repeats=2",
                       "--set", "train.ema_schedule='flow-grpo'")
    assert code == 0, out


def test_deepspeed_presets_and_user_config(tmp_path):
    from grpo.core.backend import OptimizerConfig
    from grpo.plugins.backends.deepspeed_backend import DeepSpeedBackend

    optim = OptimizerConfig(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0)
    z3 = DeepSpeedBackend(preset="zero3-offload").config(optim)["zero_optimization"]
    assert z3["stage"] == 3 and z3["offload_optimizer"]["device"] == "cpu" and z3["offload_param"]["device"] == "cpu"
    assert DeepSpeedBackend(preset="zero3-offload", offload_param=False).config(optim)["zero_optimization"].get(
        "offload_param") is None  # an explicit key wins over the preset
    assert DeepSpeedBackend(preset="zero2", zero_stage=1).config(optim)["zero_optimization"]["stage"] == 1
    assert DeepSpeedBackend().config(optim)["zero_optimization"]["stage"] == 2
    mine = tmp_path / "ds.json"
    mine.write_text('{"zero_optimization": {"overlap_comm": true}, "gradient_clipping": 0.5}')
    cfg = DeepSpeedBackend(preset="zero3", config_file=str(mine)).config(optim)
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": True, "stage3_gather_16bit_weights_on_model_save": True}
    assert cfg["gradient_clipping"] == 0.5
    mine.write_text('{"train_batch_size": 8}')
    with pytest.raises(UserError, match="train_batch_size are set by grpo"):
        DeepSpeedBackend(config_file=str(mine)).config(optim)
    mine.write_text('{"zero_optimization": ')
    with pytest.raises(UserError, match="not valid JSON"):
        DeepSpeedBackend(config_file=str(mine)).config(optim)


def test_nproc_needs_a_multi_process_backend_and_whole_trees(tmp_path):
    for backend in ("torch", "deepspeed"):
        code, out = invoke("run", DANCE, "--nproc", "3", "--set", f"backend.use='{backend}'", "--out", str(tmp_path / "r"))
        assert code == 2 and "train.prompts_per_iteration" in out and "multiple of 3" in out
    assert not (tmp_path / "r").exists()
    # a backend that runs one process whatever it is started as (a third-party one, say) is refused
    recipe, _ = load_recipe(DANCE, [], env=False)
    with pytest.raises(UserError, match="runs in one process") as e:
        check_world(recipe, launched=2, ranks=1)
    assert e.value.where == "backend.use"


def test_a_recipe_that_is_not_text_is_one_message(tmp_path):
    """Binary garbage as a recipe: one message naming the file, exit 2 (it was a UnicodeDecodeError traceback)."""
    bad = tmp_path / "weights.toml"
    bad.write_bytes(bytes(range(128, 256)) * 4)
    for command in ("validate", "plan", "run"):
        code, out = invoke(command, str(bad))
        assert code == 2 and "weights.toml" in out and "not a text file" in out and "Traceback" not in out, out


def test_a_misspelled_use_is_named(tmp_path):
    """`usx = "shapes"` is reported as the unknown key it is, with `use` suggested (it was only
    "missing key 'use'")."""
    text = (ROOT / "recipes" / "shapes_dance.toml").read_text().replace('[model]\nuse = "shapes"', '[model]\nusx = "shapes"')
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    code, out = invoke("validate", str(recipe))
    assert code == 2 and "model.usx" in out and "unknown key 'usx'" in out and "did you mean 'use'" in out, out
