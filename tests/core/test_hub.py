"""Hub ids resolved through a Hugging Face cache in its real layout, offline: huggingface_hub's own
readers accept the cache the tests write, and `grpo.core.hub` finds what they find."""

from __future__ import annotations

import json

import huggingface_hub as hf
import pytest

from grpo.core import hub
from grpo.core.errors import UserError
from grpo.testing.hub_cache import add_to_hub_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "weights.safetensors").write_bytes(b"\0" * 1000)
    (src / "sub" / "model.pt").write_bytes(b"\1" * 300)
    (src / "tokenizer.json").write_text("{}")
    return src


@pytest.mark.parametrize("value,want", [
    ("owner/name", hub.HubRef("owner/name")),
    ("black-forest-labs/FLUX.1-dev", hub.HubRef("black-forest-labs/FLUX.1-dev")),
    ("xswu/HPSv2:HPS_v2.1_compressed.pt", hub.HubRef("xswu/HPSv2", None, "HPS_v2.1_compressed.pt")),
    ("KlingTeam/VideoReward:checkpoint-11352/model.pth", hub.HubRef("KlingTeam/VideoReward", None,
                                                                     "checkpoint-11352/model.pth")),
    ("owner/name@v1.0", hub.HubRef("owner/name", "v1.0")),
    ("owner/name@refs/pr/3:a.pt", hub.HubRef("owner/name", "refs/pr/3", "a.pt")),
    ("/models/flux", None), ("./flux", None), ("~/flux", None), ("flux", None), ("a/b/c", None),
    ("${FLUX_PATH}", None), ("", None), ("C:\\models\\flux", None),
    ("weights/hps.pt", None), ("ckpt/model.safetensors", None),  # paths to a weights file that is not there
])
def test_what_counts_as_a_hub_id(value, want):
    assert hub.hub_ref(value) == want
    if want is not None:
        assert hub.hub_ref(str(want)) == want  # it prints as it is written


def test_a_local_path_wins_over_an_id(tmp_path, monkeypatch):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub.hub_ref("owner/name") is None
    assert hub.resolve("owner/name", where="w", what="x") == hub.Path("owner/name")


def test_huggingface_hub_reads_the_cache_the_tests_write(cache, repo):
    snapshot = add_to_hub_cache(cache, "owner/tiny", repo)
    got = hf.hf_hub_download("owner/tiny", "sub/model.pt", cache_dir=str(cache), local_files_only=True)
    assert hub.Path(got) == snapshot / "sub" / "model.pt" and hub.Path(got).read_bytes() == b"\1" * 300
    assert hub.Path(hf.snapshot_download("owner/tiny", cache_dir=str(cache), local_files_only=True)) == snapshot
    info = hf.scan_cache_dir(cache)
    assert not info.warnings
    (entry,) = info.repos
    assert entry.repo_id == "owner/tiny" and entry.size_on_disk == 1000 + 300 + len('{"a": 1}') + 2
    assert {r.commit_hash for r in entry.revisions} == {snapshot.name}


def test_resolve_finds_folders_files_and_revisions(cache, repo, tmp_path):
    main = add_to_hub_cache(cache, "owner/tiny", repo)
    (repo / "config.json").write_text('{"a": 2}')
    tagged = add_to_hub_cache(cache, "owner/tiny", repo, revision="v2")
    assert tagged != main
    assert hub.resolve("owner/tiny", where="w", what="x", patterns=hub.MODEL) == main
    assert json.loads((hub.resolve("owner/tiny@v2", where="w", what="x") / "config.json").read_text()) == {"a": 2}
    assert hub.resolve("owner/tiny@" + main.name, where="w", what="x") == main  # a commit id names its snapshot
    assert hub.resolve("owner/tiny:sub/model.pt", where="w", what="x") == main / "sub" / "model.pt"
    assert hub.size_of(main) == 1000 + 300 + 8 + 2  # sizes follow the cache's links to its blobs


def test_hf_hub_cache_overrides_hf_home(tmp_path, repo, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    snapshot = add_to_hub_cache(tmp_path / "elsewhere", "owner/tiny", repo)
    assert hub.cache_dir() == tmp_path / "elsewhere"
    assert hub.cached(hub.HubRef("owner/tiny")) == snapshot
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub.cache_dir() == tmp_path / "home" / "hub" and hub.cached(hub.HubRef("owner/tiny")) is None


def test_what_the_cache_lacks_is_an_error_with_its_fetch_command(cache, repo):
    add_to_hub_cache(cache, "owner/tiny", repo, files=["config.json"])
    with pytest.raises(UserError) as e:
        hub.resolve("owner/other:w.pt", where="reward.path", what="weights")
    assert e.value.where == "reward.path" and "HF_HUB_OFFLINE" in e.value.message
    assert "hf download owner/other w.pt" in e.value.hint
    with pytest.raises(UserError) as e:  # the file is not in the snapshot
        hub.resolve("owner/tiny:sub/model.pt", where="reward.path", what="weights")
    assert "hf download owner/tiny sub/model.pt" in e.value.hint
    with pytest.raises(UserError) as e:  # a folder without any file the option reads
        hub.resolve("owner/tiny", where="reward.tokenizer", what="tokenizer", patterns=("merges.txt",))
    assert "--include merges.txt" in e.value.hint


def test_checks_never_download(tmp_path, monkeypatch):
    """Online, but `download=False`: the answer comes from the cache alone (no network is touched:
    the endpoint is unreachable and the call still returns at once)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError) as e:
        hub.resolve("owner/absent", where="model.path", what="model", patterns=hub.PIPELINE, download=False)
    assert "checks never download" in e.value.message and "hf download owner/absent" in e.value.hint


def test_a_pipeline_is_cached_when_every_component_it_names_is(cache, tmp_path):
    src = tmp_path / "pipe"
    for part in ("vae", "transformer", "scheduler"):
        (src / part).mkdir(parents=True)
    (src / "scheduler" / "scheduler_config.json").write_text("{}")  # a component without weights
    for part in ("vae", "transformer"):
        (src / part / "config.json").write_text("{}")
        (src / part / "diffusion_pytorch_model.safetensors").write_bytes(part.encode())
    (src / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "vae": ["diffusers", "X"],
                                                      "transformer": ["diffusers", "Y"],
                                                      "scheduler": ["diffusers", "Z"], "tokenizer": [None, None]}))
    (src / "flux1-dev.safetensors").write_bytes(b"0")  # a single-file checkpoint a run does not read
    ref = hub.HubRef("owner/pipe")
    add_to_hub_cache(cache, "owner/pipe", src, files=["model_index.json", "vae/config.json"])
    assert hub.cached(ref, hub.PIPELINE) is None
    assert hub.fetch_command(ref, hub.PIPELINE) == ("hf download owner/pipe --include model_index.json "
                                                    "--include 'scheduler/*' --include 'transformer/*' "
                                                    "--include 'vae/*'")
    # every folder is there, but the transformer's weights are not (a fetch of the configs alone)
    configs = ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
               "transformer/config.json", "scheduler/scheduler_config.json"]
    add_to_hub_cache(cache, "owner/pipe", src, files=configs)
    assert hub.cached(ref, hub.PIPELINE) is None
    snapshot = add_to_hub_cache(cache, "owner/pipe", src, files=[*configs, "transformer/diffusion_pytorch_model.safetensors"])
    assert hub.cached(ref, hub.PIPELINE) == snapshot
    assert hub.fetch_command(hub.HubRef("owner/unknown"), hub.PIPELINE).endswith("--include '*/*'")


def test_a_partly_fetched_model_is_not_cached(cache, tmp_path):
    """A model folder without its weights, or a sharded checkpoint missing a shard, is what an
    interrupted download leaves: a run would fail to load it, so it counts as missing."""
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "tokenizer.json").write_text("{}")
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (src / shard).write_bytes(shard.encode())
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))
    ref = hub.HubRef("owner/sharded")
    add_to_hub_cache(cache, ref.repo, src, files=["config.json", "tokenizer.json"])
    assert hub.cached(ref, hub.MODEL) is None and hub.cached(ref) is None
    assert hub.cached(ref, hub.TOKENIZER) is not None  # what a tokenizer option reads is all there
    add_to_hub_cache(cache, ref.repo, src, files=["config.json", "tokenizer.json", "model.safetensors.index.json",
                                                  "model-00001-of-00002.safetensors"])
    assert hub.cached(ref, hub.MODEL) is None
    assert hub.cached(ref, hub.CONFIG_AND_TOKENIZER) is not None  # an option that reads no weights
    with pytest.raises(UserError) as e:
        hub.resolve(ref.repo, where="reward.path", what="weights", patterns=hub.MODEL)
    assert "not in the Hugging Face cache" in e.value.message
    whole = add_to_hub_cache(cache, ref.repo, src)
    assert hub.cached(ref, hub.MODEL) == whole == hub.cached(ref)


def test_the_fetch_command_names_a_files_companions():
    ref = hub.HubRef("zai-org/ImageReward", None, "ImageReward.pt")
    assert hub.fetch_command(ref, (), ("med_config.json",)) == "hf download zai-org/ImageReward ImageReward.pt med_config.json"
    nested = hub.HubRef("owner/name", "v1", "ckpt/model.pt")
    assert hub.fetch_command(nested, (), ("config.json",)) == ("hf download owner/name ckpt/model.pt ckpt/config.json "
                                                               "--revision v1")
