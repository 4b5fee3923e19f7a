"""Weights named by a local path or by a Hugging Face Hub id, resolved through the Hub's cache.

A weights option (``model.path``, a reward's ``path``, ``tokenizer``, ``base`` …) takes either

- a local file or folder: ``/models/FLUX.1-dev``, ``~/weights/hps.pt``, ``./ckpt``; or
- a Hub id: ``owner/name`` for a repository, ``owner/name:file/in/repo`` for one file of it, and
  ``@revision`` after the name for a branch, tag or commit (``owner/name@v1.0:model.pt``).

A value that exists on disk is a local path even when it looks like an id. Hub ids resolve
through the cache that ``huggingface_hub`` uses, read from the environment at each call:
``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``. With
``HF_HUB_OFFLINE=1`` nothing is downloaded; without it, a run downloads what its cache lacks
(``download=True``), and checks (``grpo validate``, ``grpo doctor``, the preflight of a run) only
look in the cache.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from .errors import UserError

_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"
                 r"(?:@(?P<revision>[A-Za-z0-9._/-]+?))?(?::(?P<file>[^:@]+))?$")

# What to take of a repository, by what the option names (patterns relative to the repository).
TOKENIZER = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.model")
CONFIG_AND_TOKENIZER = ("*.json", "*.txt", "*.model")
MODEL = (*CONFIG_AND_TOKENIZER, "*.safetensors")
# A diffusers pipeline: model_index.json, then the folders of the components it names.
PIPELINE = ("model_index.json",)
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class HubRef:
    """A repository (or one file of it) on the Hugging Face Hub."""

    repo: str
    revision: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "") + (f":{self.file}" if self.file else "")

    def fetch_command(self, patterns: Sequence[str] = (), companions: Sequence[str] = ()) -> str:
        """The one shell command that puts this reference into the cache (a single file with the
        `companions` beside it)."""
        parts = ["hf", "download", self.repo]
        if self.file:
            parts += [self.file, *(_beside(self.file, name) for name in companions)]
        for p in patterns if not self.file else ():
            parts += ["--include", f"'{p}'" if any(c in p for c in "*?[") else p]
        if self.revision:
            parts += ["--revision", self.revision]
        return " ".join(parts)


def hub_ref(value: str) -> HubRef | None:
    """The Hub reference `value` names, or None for a local path (or anything that is not an id)."""
    if not isinstance(value, str) or not value or value.startswith(("/", ".", "~", "$")) or "\\" in value:
        return None
    if Path(value).exists():
        return None
    m = _ID.match(value)
    if not m or (not m["file"] and m["repo"].lower().endswith(WEIGHTS_SUFFIXES)):
        return None  # `weights/hps.pt` is a local file that is not there, not a repository
    return HubRef(m["repo"], m["revision"] or None, m["file"] or None)


def _beside(file: str, name: str) -> str:
    """The path in the repository of `name` in the folder of `file`."""
    parent = PurePosixPath(file).parent
    return name if parent == PurePosixPath(".") else (parent / name).as_posix()


def cache_dir() -> Path:
    """The Hub cache this process reads, from the environment as ``huggingface_hub`` reads it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(base)) / "huggingface" / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _snapshot(ref: HubRef) -> Path | None:
    """The cached snapshot folder of `ref`'s revision, or None (no network)."""
    repo_dir = cache_dir() / ("models--" + ref.repo.replace("/", "--"))
    revision = ref.revision or "main"
    ref_file = repo_dir / "refs" / revision
    commit = ref_file.read_text().strip() if ref_file.is_file() else revision
    folder = repo_dir / "snapshots" / commit
    return folder if folder.is_dir() else None


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(rel, p) for p in patterns)


def pipeline_patterns(index: dict) -> list[str]:
    """What a run reads of a diffusers pipeline repository: its index and the folders of the
    components the index names (not the single-file checkpoints some repositories also hold)."""
    parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
    return ["model_index.json", *(f"{p}/*" for p in sorted(parts))]


def _index(snapshot: Path) -> dict | None:
    """A pipeline snapshot's ``model_index.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((snapshot / "model_index.json").read_text())
    except (OSError, ValueError):
        return None


def cached(ref: HubRef, patterns: Sequence[str] = ()) -> Path | None:
    """The local file or snapshot folder of `ref` when the cache holds it, else None; never downloads.

    A folder counts as cached when its snapshot holds a file matching the patterns (for a
    pipeline: the index, then every component's folder) and, where weights are read, is whole
    (see `_complete`)."""
    folder = _snapshot(ref)
    if folder is None:
        return None
    if ref.file:
        path = folder / ref.file
        return path if path.is_file() else None
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if tuple(patterns) == PIPELINE:
        index = _index(folder)
        if index is None:
            return None
        whole = all(any(fnmatch(f, pat) for f in present) for pat in pipeline_patterns(index)[1:])
        return folder if whole and _complete(folder, present) else None
    if patterns:
        present = {f for f in present if _matches(f, patterns)}
    wants_weights = not patterns or any(p.endswith(WEIGHTS_SUFFIXES) for p in patterns)
    return folder if present and (not wants_weights or _complete(folder, present)) else None


def _complete(folder: Path, present: set[str]) -> bool:
    """No model folder without its weights and no sharded checkpoint without every shard: what a
    fetch of the configs alone, or an interrupted download, leaves in a snapshot is not cached."""
    for rel in present:
        path = PurePosixPath(rel)
        if path.name == "config.json" and not any(
                PurePosixPath(f).parent == path.parent and f.endswith(WEIGHTS_SUFFIXES) for f in present):
            return False
        if rel.endswith(".index.json"):
            try:
                shards = set(json.loads((folder / rel).read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                return False
            if any((path.parent / shard).as_posix() not in present for shard in shards):
                return False
    return True


def size_of(path: Path) -> int:
    """Bytes of a file or of every file under a folder, the cache's links followed."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(ref: HubRef, patterns: Sequence[str] = (), companions: Sequence[str] = ()) -> tuple[bool, str]:
    """(in the cache?, a line for `grpo doctor`): its size there, or the command that fetches it."""
    path = cached(ref, patterns)
    if path is not None:
        return True, f"in the Hub cache ({size_of(path) / 2**30:.2f} GiB at {path})"
    return False, f"not in the Hub cache {cache_dir()}; fetch it: {fetch_command(ref, patterns, companions)}"


def fetch_command(ref: HubRef, patterns: Sequence[str] = (), companions: Sequence[str] = ()) -> str:
    """`hf download …` of what a run reads of `ref`; for a pipeline the folders its cached index
    names, else every folder (not the single-file checkpoints at the top of some repositories)."""
    if tuple(patterns) == PIPELINE:
        snapshot = _snapshot(HubRef(ref.repo, ref.revision))
        index = _index(snapshot) if snapshot is not None else None
        patterns = pipeline_patterns(index) if index else ["model_index.json", "*/*"]
    return ref.fetch_command(patterns, companions)


def resolve(value: str, *, where: str, what: str, patterns: Sequence[str] | None = (), download: bool = True,
            companions: Sequence[str] = (), env: str | None = None) -> Path:
    """The local file or folder `value` names: a path as it is, a Hub id through the cache.

    `patterns` choose what to take of a repository (``PIPELINE`` for a diffusers pipeline; None
    where `value` must be a local path);
    `companions` are files beside a single file that are downloaded with it when the repository
    has them.
    A Hub id the cache lacks is downloaded when `download` and not offline, else a UserError with
    the command that fetches it.
    """
    if not value:
        var = env or "WEIGHTS_PATH"
        raise UserError(f"no {what} given", where=where,
                        hint=f"set {where} to a local path or a Hugging Face Hub id (owner/name), or export {var}")
    ref = hub_ref(value) if patterns is not None else None
    if ref is None:
        path = Path(os.path.expanduser(value))
        if not path.exists():
            raise UserError(f"{what} {str(path)!r} does not exist", where=where,
                            hint=f"fix the path or point {env or where} at it"
                                 + (", or name a Hub id (owner/name)" if patterns is not None else ""))
        return path
    found = cached(ref, patterns)
    if found is not None:
        return found
    if offline() or not download:
        why = "HF_HUB_OFFLINE is set" if offline() else "checks never download"
        raise UserError(f"{what} {str(ref)!r} is not in the Hugging Face cache {str(cache_dir())!r} ({why})",
                        where=where, hint=f"fetch it: {fetch_command(ref, patterns, companions)}; or name a local path")
    return _download(ref, patterns, companions, where, what)


def _download(ref: HubRef, patterns: Sequence[str], companions: Sequence[str], where: str, what: str) -> Path:
    import huggingface_hub as hf
    from huggingface_hub import errors

    kw = {"revision": ref.revision, "cache_dir": str(cache_dir())}
    wanted = ref.file  # the file being fetched, for the message when the repository lacks it
    try:
        if ref.file:
            path = Path(hf.hf_hub_download(ref.repo, ref.file, **kw))
            for name in companions:
                try:
                    hf.hf_hub_download(ref.repo, _beside(ref.file, name), **kw)
                except errors.LocalEntryNotFoundError:
                    raise
                except errors.EntryNotFoundError:  # the repository has no such companion
                    pass
            return path
        if tuple(patterns) == PIPELINE:
            wanted = "model_index.json"
            index = json.loads(Path(hf.hf_hub_download(ref.repo, wanted, **kw)).read_text())
            allow = pipeline_patterns(index)
        else:
            allow = list(patterns) or None
        return Path(hf.snapshot_download(ref.repo, allow_patterns=allow, **kw))
    except errors.GatedRepoError:
        raise UserError(f"{str(ref)!r} is gated on the Hugging Face Hub", where=where,
                        hint=f"accept its licence on huggingface.co/{ref.repo}, run `hf auth login`, then "
                             f"{fetch_command(ref, patterns, companions)}") from None
    except errors.RepositoryNotFoundError:
        raise UserError(f"no local file or folder {str(ref)!r}, and no Hugging Face repository {ref.repo!r} "
                        "(or it is private)", where=where,
                        hint="fix the path, or check the id (log in with `hf auth login` for a private one)") from None
    except errors.RevisionNotFoundError:
        raise UserError(f"{ref.repo!r} has no revision {ref.revision!r}", where=where,
                        hint="name a branch, tag or commit of the repository") from None
    except errors.LocalEntryNotFoundError:  # the Hub did not answer, and the cache lacks the file
        raise UserError(f"could not reach the Hugging Face Hub to download {what} {str(ref)!r}, and the cache "
                        "lacks it", where=where,
                        hint=f"check the network (and HF_ENDPOINT), or fetch it where there is one: "
                             f"{fetch_command(ref, patterns, companions)}") from None
    except errors.EntryNotFoundError:
        if wanted == "model_index.json" and not ref.file:
            raise UserError(f"{ref.repo!r} has no model_index.json: it is not a diffusers pipeline", where=where,
                            hint="name a repository in the diffusers layout, or a local folder of one") from None
        raise UserError(f"{ref.repo!r} has no file {wanted!r}", where=where,
                        hint="name a file of the repository after ':'") from None
    except (errors.HfHubHTTPError, OSError) as e:
        raise UserError(f"could not download {what} {str(ref)!r}: {str(e).splitlines()[0] if str(e) else e!r}",
                        where=where, hint=f"check the network, or fetch it first: {fetch_command(ref, patterns, companions)}"
                        ) from None
