"""The recipes for real models: they validate without weights, refuse to run without them (exit 2,
naming the variable), and `grpo doctor` says what is missing and where to get it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from grpo.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
REAL = sorted(p for p in (ROOT / "recipes").glob("*.toml") if not p.name.startswith("shapes"))
VARS = ("FLUX_PATH", "SD35_PATH", "WAN_PATH", "HPS_PATH", "CLIP_TOKENIZER_PATH", "HPD_PROMPTS", "VIDEO_PROMPTS",
        "VIDEOALIGN_PATH", "QWEN2VL_PATH", "VIDEOALIGN_TEMPLATE", "PICKSCORE_PATH", "IMAGEREWARD_PATH", "BLIP_PATH")


@pytest.fixture(autouse=True)
def no_weights(monkeypatch):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_real_recipes_validate_and_name_their_hardware(recipe):
    code, out = invoke("validate", str(recipe))
    assert code == 0, out
    head = recipe.read_text().splitlines()[:12]
    assert any("grpo run recipes/" + recipe.name in line for line in head)
    assert any("Hardware:" in line for line in head)


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_running_without_weights_names_the_variable(recipe, tmp_path):
    code, out = invoke("run", str(recipe), "--out", str(tmp_path / "run"))
    assert code == 2 and "model.path" in out and "is not set" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_the_users_first_command_without_weights(tmp_path):
    code, out = invoke("run", str(ROOT / "recipes" / "wanx_branch.toml"))
    assert code == 2 and "model.path" in out and "WAN_PATH" in out and "Traceback" not in out
    code, out = invoke("doctor", str(ROOT / "recipes" / "wanx_branch.toml"))
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")
    assert code == 2 and all(v in out for v in ("WAN_PATH", "VIDEOALIGN_PATH", "QWEN2VL_PATH", "VIDEO_PROMPTS"))
    assert "KlingTeam/VideoReward" in flat and "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in flat


def test_a_missing_folder_names_the_path_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUX_PATH", str(tmp_path / "FLUX.1-dev"))
    for name in ("HPS_PATH", "CLIP_TOKENIZER_PATH", "HPD_PROMPTS"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    code, out = invoke("run", str(ROOT / "recipes" / "flux_branch.toml"), "--out", str(tmp_path / "run"))
    # every missing file at once, before any weights load, each with where to get it
    assert code == 2 and "4 problems" in out and "Traceback" not in out
    for where, source in (("model.path", "black-forest-labs/FLUX.1-dev"), ("reward.0.path", "xswu/HPSv2"),
                          ("reward.0.tokenizer", "laion/CLIP-ViT-H-14"), ("prompts.path", "HPDv2")):
        assert where in out and source in out, (where, out)


def test_doctor_lists_what_is_missing_and_where_to_get_it(tmp_path):
    code, out = invoke("doctor", str(ROOT / "recipes" / "flux_branch.toml"))
    assert code == 2
    for text in ("FLUX_PATH", "HPS_PATH", "CLIP_TOKENIZER_PATH", "HPD_PROMPTS", "xswu/HPSv2"):
        assert text in out.replace("\n", "").replace("│", "").replace(" ", "") or text in out, text


def test_doctor_passes_when_everything_is_there(tmp_path, monkeypatch):
    from grpo.testing.tiny_diffusers import clip_tokenizer, tiny_flux

    tiny_flux(tmp_path / "flux")
    torch.save({"state_dict": {}}, tmp_path / "hps.pt")
    clip_tokenizer().save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "prompts.txt").write_text("a cat\n")
    for name, value in (("FLUX_PATH", "flux"), ("HPS_PATH", "hps.pt"), ("CLIP_TOKENIZER_PATH", "tok"),
                        ("HPD_PROMPTS", "prompts.txt")):
        monkeypatch.setenv(name, str(tmp_path / value))
    code, out = invoke("doctor", str(ROOT / "recipes" / "flux_branch.toml"), "--set", "model.device='cpu'")
    assert code == 0, out
    assert "FluxPipeline" in out and "all" in out and "checks passed" in out
    (tmp_path / "flux" / "vae" / "config.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "flux" / "vae")
    code, out = invoke("doctor", str(ROOT / "recipes" / "flux_branch.toml"), "--set", "model.device='cpu'")
    assert code == 2 and "missing vae" in out


@pytest.mark.parametrize("name,source", [("hpsv2", "xswu/HPSv2"), ("flux", "black-forest-labs/FLUX.1-dev"),
                                         ("wan-t2v", "Wan-AI/Wan2.1-T2V"), ("file", "HPDv2")])
def test_plugins_show_says_where_to_get_the_files(name, source):
    code, out = invoke("plugins", "show", name)
    assert code == 0 and "where to get" in out and source in out.replace("\n", "")
