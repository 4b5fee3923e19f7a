"""The recipes for real models: they name their weights by Hub id (a variable overrides each with a
local copy), validate with no variable set and nothing downloaded, refuse to run without their
weights (exit 2, naming what is missing and the command that fetches it), and `grpo doctor` says
what is missing and where to get it."""

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
def no_weights(monkeypatch, tmp_path):
    """No variable set, an empty Hub cache, and offline: nothing can be downloaded."""
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def weight_ids(recipe: Path) -> dict[str, str]:
    """{variable: default Hub id} of the recipe's weights."""
    from grpo.core.recipe import ENV_PATTERN

    return {m.group(1): m.group(2) for m in ENV_PATTERN.finditer(recipe.read_text()) if m.group(2)}


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
def test_real_recipes_name_their_weights_by_hub_id(recipe):
    from grpo.core import hub

    data = recipe.read_text()
    ids = weight_ids(recipe)
    assert "FLUX_PATH" in ids or "SD35_PATH" in ids or "WAN_PATH" in ids
    assert all(hub.hub_ref(v) is not None for v in ids.values()), ids
    assert all(f"${{{v}}}" not in data for v in ids)  # every weight has its default


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_running_without_weights_names_each_with_its_fetch_command(recipe, tmp_path, monkeypatch):
    for name in ("HPD_PROMPTS", "VIDEO_PROMPTS", "VIDEOALIGN_TEMPLATE"):  # what is not a weight
        (tmp_path / name).write_text("a cat\n")
        monkeypatch.setenv(name, str(tmp_path / name))
    code, out = invoke("run", str(recipe), "--out", str(tmp_path / "run"))
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")
    assert code == 2 and "model.path" in out and "Traceback" not in out
    for hub_id in weight_ids(recipe).values():
        repo, _, file = hub_id.partition(":")
        assert ("hfdownload" + repo + file).replace(" ", "") in flat, (hub_id, out)
    assert not (tmp_path / "run").exists()


def test_the_users_first_command_without_weights(tmp_path):
    code, out = invoke("run", str(ROOT / "recipes" / "wanx_branch.toml"))
    assert code == 2 and "VIDEOALIGN_TEMPLATE" in out and "Traceback" not in out
    code, out = invoke("doctor", str(ROOT / "recipes" / "wanx_branch.toml"))
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")
    assert code == 2 and all(v in out for v in ("WAN_PATH", "VIDEOALIGN_PATH", "QWEN2VL_PATH", "VIDEO_PROMPTS"))
    assert "hfdownloadKlingTeam/VideoRewardcheckpoint-11352/model.pth" in flat
    assert "hfdownloadWan-AI/Wan2.1-T2V-1.3B-Diffusers--includemodel_index.json" in flat


@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_doctor_with_an_empty_cache_lists_each_missing_weight(recipe):
    code, out = invoke("doctor", str(recipe))
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")
    assert code == 2
    for hub_id in weight_ids(recipe).values():
        repo, _, file = hub_id.partition(":")
        assert "notintheHubcache" in flat and ("hfdownload" + repo + file) in flat, hub_id


def test_doctor_finds_the_weights_in_the_cache(tmp_path, monkeypatch):
    """With the recipe's ids in the cache (tiny stand-ins, the cache's real layout) and no variable
    but the prompts set, the doctor passes and reports each weight's size in the cache."""
    from grpo.testing.hub_cache import add_to_hub_cache
    from grpo.testing.tiny_diffusers import clip_tokenizer, tiny_flux

    cache = tmp_path / "hf" / "hub"
    tiny_flux(tmp_path / "flux")
    torch.save({"state_dict": {}}, tmp_path / "HPS_v2.1_compressed.pt")
    clip_tokenizer().save_pretrained(str(tmp_path / "tok"))
    ids = weight_ids(ROOT / "recipes" / "flux_branch.toml")
    add_to_hub_cache(cache, ids["FLUX_PATH"], tmp_path / "flux")
    add_to_hub_cache(cache, ids["HPS_PATH"].partition(":")[0], tmp_path, files=["HPS_v2.1_compressed.pt"])
    add_to_hub_cache(cache, ids["CLIP_TOKENIZER_PATH"], tmp_path / "tok")
    (tmp_path / "prompts.txt").write_text("a cat\n")
    monkeypatch.setenv("HPD_PROMPTS", str(tmp_path / "prompts.txt"))
    code, out = invoke("doctor", str(ROOT / "recipes" / "flux_branch.toml"), "--set", "model.device='cpu'")
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")
    assert code == 0, out
    assert flat.count("intheHubcache(") == 3 and flat.count("GiBat") == 3 and "FluxPipeline" in flat


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


def test_doctor_says_which_components_a_cached_pipeline_lacks(tmp_path):
    from grpo.testing.hub_cache import add_to_hub_cache
    from grpo.testing.tiny_diffusers import tiny_flux

    folder = tiny_flux(tmp_path / "flux")
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.parts[-2] != "vae"]
    add_to_hub_cache(tmp_path / "hf" / "hub", weight_ids(ROOT / "recipes" / "flux_dance.toml")["FLUX_PATH"], folder,
                     files=files)
    code, out = invoke("doctor", str(ROOT / "recipes" / "flux_dance.toml"))
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")
    assert code == 2 and "missingvaeintheHubcache;fetchtherest:hfdownloadblack-forest-labs/FLUX.1-dev" in flat
    assert "--include'vae/*'" in flat  # the command names the components of the cached index
