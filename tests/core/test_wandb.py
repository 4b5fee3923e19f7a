"""Weights & Biases logging, read back from the offline run's own files: the same scalars as
metrics.jsonl against `iteration`, the sample grids as images, the resolved recipe as the config,
and the same wandb run continued by --resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.rundir import WANDB_ID
from grpo.core.tomlfile import tomllib
from grpo.testing import run_tiny_recipe
from grpo.testing.wandb_offline import read_offline_runs

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "shapes_dance.toml"
WANDB = ["logging.wandb=true", "logging.mode='offline'", "logging.project='grpo-tests'", "logging.tensorboard=false",
         "logging.progress=false", "eval.every=1", "eval.every_minutes=0.0", "train.checkpoint_every=1"]


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def numeric(record: dict) -> dict:
    return {f"{record['kind']}/{k}": v for k, v in record.items()
            if k not in ("iteration", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_two_iterations_offline_read_back(tmp_path):
    records = run_tiny_recipe(RECIPE, tmp_path / "run", [*WANDB, "train.iterations=2"])
    (run,) = read_offline_runs(tmp_path / "run" / "wandb")
    assert run.id == json.loads((tmp_path / "run" / WANDB_ID).read_text())["id"] and run.project == "grpo-tests"
    assert run.config["strategy"]["use"] == "dancegrpo" and run.config["train"]["iterations"] == 2
    # the config is the resolved recipe as the run wrote it, the parts that ran included
    assert run.config == tomllib.loads((tmp_path / "run" / "recipe.resolved.toml").read_text())
    assert run.config["parts"]["topology"]["use"] == "fan"
    assert run.config["model"]["path"] == str(json.loads(json.dumps(run.config["model"]["path"])))
    scalars = [r for r in run.history if not any(k.startswith("eval/samples") for k in r)]
    assert len(scalars) == len(records)  # one wandb row per metrics.jsonl record, in the same order
    for row, record in zip(scalars, records, strict=True):
        assert row["iteration"] == record["iteration"]
        want = {k: v for k, v in numeric(record).items() if v == v}  # NaN is not logged
        assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-6), record["kind"]
    assert {"train", "eval"} <= {r["kind"] for r in records} and "train/reward/shapes-faithfulness/mean" in run.keys
    images = [r for r in run.history if "eval/samples" in r]
    assert [r["iteration"] for r in images] == [0, 1, 2] and images[0]["eval/samples"]["_type"] == "image-file"


def test_resume_continues_the_same_wandb_run(tmp_path):
    run_tiny_recipe(RECIPE, tmp_path / "run", [*WANDB, "train.iterations=1"])
    first = json.loads((tmp_path / "run" / WANDB_ID).read_text())["id"]
    resolved = tmp_path / "run" / "recipe.resolved.toml"
    resolved.write_text(resolved.read_text().replace("iterations = 1\n", "iterations = 2\n"))
    (tmp_path / "run" / "finished.json").unlink()
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    runs = read_offline_runs(tmp_path / "run" / "wandb")
    assert len(runs) == 2 and {r.id for r in runs} == {first}
    assert max(r["iteration"] for r in runs[1].history) == 2
    assert min(r["iteration"] for r in runs[1].history if "train/reward/shapes-faithfulness/mean" in r) == 1  # only what is new


def test_a_missing_wandb_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    sets = [x for s in WANDB for x in ("--set", s)]
    result = CliRunner().invoke(app, ["run", str(RECIPE), *sets, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "logging.wandb" in result.output and "pip install 'grpo[wandb]'" in result.output
    assert "Traceback" not in result.output


def test_a_wandb_run_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch):
    """Online with no credentials and no terminal to ask on: wandb refuses, and the run says what to do."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc holding a key
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    sets = [x for s in [*WANDB, "logging.mode='online'", "train.iterations=1"] for x in ("--set", s)]
    result = CliRunner().invoke(app, ["run", str(RECIPE), *sets, "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Weights & Biases could not start" in result.output and "logging.mode" in result.output
    assert "wandb login" in result.output and "Traceback" not in result.output


def test_videos_are_logged_as_videos(tmp_path):
    """An animated grid (as the evaluator writes for video models) becomes a wandb video of the same
    file, whose frames keep the model's frame time."""
    import io

    from PIL import Image

    from grpo.core.runlog import RunLog

    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(4)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // 16, loop=0)
    (tmp_path / "grid.gif").write_bytes(buf.getvalue())
    log = RunLog(tmp_path, tensorboard=False, wandb=dict(project="grpo-tests", entity="", name="", mode="offline",
                                                         config={"model": {"fps": 16}}))
    log.animation("eval/videos", buf.getvalue(), 8, 8, 3, path=tmp_path / "grid.gif")
    log.close()
    (run,) = read_offline_runs(tmp_path / "wandb")
    (row,) = [r for r in run.history if "eval/videos" in r]
    assert row["iteration"] == 3 and row["eval/videos"]["_type"] == "video-file"
    (media,) = (run.folder / "files").rglob("*.gif")
    assert media.read_bytes() == buf.getvalue()
    assert abs(Image.open(media).info["duration"] - 1000 / 16) <= 10  # GIF keeps 10 ms units
    assert run.config == {"model": {"fps": 16}}
