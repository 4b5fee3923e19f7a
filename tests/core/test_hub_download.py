"""Downloads by Hub id, against a local server that answers the Hub's HTTP protocol (the real
huggingface_hub client runs against it; no network is used): a run takes only what it reads of a
repository into the cache, and the Hub's errors become messages naming the recipe key."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grpo.core import hub
from grpo.core.errors import UserError

COMMIT = "c0ffee" + "0" * 34
FILES = {
    "model_index.json": json.dumps({"_class_name": "FluxPipeline", "vae": ["diffusers", "AutoencoderKL"],
                                    "transformer": ["diffusers", "T"], "tokenizer": [None, None]}).encode(),
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": b"v" * 32,
    "transformer/config.json": b"{}",
    "transformer/diffusion_pytorch_model.safetensors": b"w" * 64,
    "flux1-dev.safetensors": b"x" * 4096,  # the single-file checkpoint beside the pipeline folders
    "tokenizer.json": b"{}",
    "vocab.json": b"{}",
    "pytorch_model.bin": b"b" * 512,
}


class FakeHub(BaseHTTPRequestHandler):
    requested: list[str] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, *, head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/api/models/"):
            repo_rev = path.removeprefix("/api/models/")
            if not repo_rev.startswith("owner/repo/"):
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head=head)
            if "/tree/" in repo_rev:
                tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for f, d in FILES.items()]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head=head)
            info = {"id": "owner/repo", "sha": COMMIT, "siblings": [{"rfilename": f} for f in FILES]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head=head)
        repo, sep, rest = path.lstrip("/").partition("/resolve/")
        if not sep or repo != "owner/repo":
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head=head)
        name = rest.split("/", 1)[1]
        if name not in FILES:
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, head=head)
        if not head:
            FakeHub.requested.append(name)
        data = FILES[name]
        return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                          head=head)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeHub.requested = []
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read from the environment when first imported
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        f"http://127.0.0.1:{server.server_port}" + "/{repo_id}/resolve/{revision}/{filename}")
    yield FakeHub
    server.shutdown()


def files_of(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_pipeline_download_takes_only_the_folders_its_index_names(fake_hub, tmp_path):
    folder = hub.resolve("owner/repo", where="model.path", what="model", patterns=hub.PIPELINE)
    assert folder == tmp_path / "hf" / "hub" / "models--owner--repo" / "snapshots" / COMMIT
    assert files_of(folder) == ["model_index.json", "transformer/config.json",
                                "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
                                "vae/diffusion_pytorch_model.safetensors"]
    assert "flux1-dev.safetensors" not in fake_hub.requested
    assert hub.cached(hub.HubRef("owner/repo"), hub.PIPELINE) == folder  # and now it is found offline
    fake_hub.requested.clear()
    assert hub.resolve("owner/repo", where="model.path", what="model", patterns=hub.PIPELINE) == folder
    assert fake_hub.requested == []  # a second run downloads nothing


def test_a_tokenizer_download_takes_the_tokenizer_files_only(fake_hub):
    folder = hub.resolve("owner/repo", where="reward.tokenizer", what="tokenizer", patterns=hub.TOKENIZER)
    assert files_of(folder) == ["tokenizer.json", "vocab.json"]


def test_a_file_with_its_companions(fake_hub, tmp_path):
    path = hub.resolve("owner/repo:vae/config.json", where="reward.path", what="weights", patterns=(),
                       companions=("absent.json",))  # a companion the repository lacks is skipped
    assert path.read_bytes() == b"{}" and fake_hub.requested == ["vae/config.json"]


@pytest.mark.parametrize("value,message", [
    ("owner/repo:nope.pt", "has no file 'nope.pt'"),
    ("someone/else", "no Hugging Face repository 'someone/else'"),
])
def test_the_hubs_errors_name_the_key(fake_hub, value, message):
    with pytest.raises(UserError) as e:
        hub.resolve(value, where="reward.path", what="weights", patterns=hub.MODEL)
    assert e.value.where == "reward.path" and message in e.value.message


def test_a_repository_without_a_pipeline_index_is_said(fake_hub, monkeypatch):
    monkeypatch.delitem(FILES, "model_index.json")
    with pytest.raises(UserError) as e:
        hub.resolve("owner/repo", where="model.path", what="model", patterns=hub.PIPELINE)
    assert e.value.where == "model.path"
    assert e.value.message == "'owner/repo' has no model_index.json: it is not a diffusers pipeline"


def test_an_unreachable_hub_is_said_as_such(fake_hub, monkeypatch):
    """No server behind the endpoint (a machine without network): the message says the Hub could not be
    reached, not that the repository lacks the file, and the hint gives the command that fetches it."""
    import time

    import huggingface_hub.constants as constants

    from grpo.core.dist import free_port

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the client's waits between its retries
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    for value, patterns in (("owner/repo:vae/config.json", ()), ("owner/repo", hub.PIPELINE)):
        with pytest.raises(UserError) as e:
            hub.resolve(value, where="reward.path", what="weights", patterns=patterns)
        assert e.value.where == "reward.path"
        assert e.value.message.startswith(f"could not reach the Hugging Face Hub to download weights {value!r}")
        assert "hf download owner/repo" in e.value.hint
    assert fake_hub.requested == []
