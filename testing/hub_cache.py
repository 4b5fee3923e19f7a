"""A Hugging Face Hub cache written on disk in the layout ``huggingface_hub`` reads, for offline tests
of components that load by Hub id::

    from grpo.testing.hub_cache import add_to_hub_cache

    add_to_hub_cache(tmp_path / "hf" / "hub", "owner/tiny-flux", folder)   # then HF_HOME=tmp_path/"hf"

The layout is the cache's own: ``models--owner--name/blobs/<hash>`` holds each file once,
``snapshots/<commit>/<path>`` links to it, and ``refs/<revision>`` names the commit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_to_hub_cache(cache: str | Path, repo_id: str, source: str | Path, *, revision: str = "main",
                     files: list[str] | None = None) -> Path:
    """Put the files of folder `source` (or only `files`, paths relative to it) into `cache` as the
    snapshot of `repo_id` at `revision`; return the snapshot folder."""
    cache, source = Path(cache), Path(source)
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    chosen = sorted(files) if files is not None else sorted(
        p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha1(repo_id.encode())
    for rel in chosen:
        digest.update(rel.encode() + hashlib.sha256((source / rel).read_bytes()).digest())
    commit = digest.hexdigest()  # 40 hex digits, as a git commit id
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for rel in chosen:
        data = (source / rel).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            shutil.copyfile(source / rel, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot
