"""Reading what a run directory holds without trusting it.

A run directory may come from someone else, or from a machine that lost power or ran out of disk.
Everything here reads data only (``torch.load(weights_only=True)``, safetensors, JSON): a pickle that
would run code is refused, never executed. A damaged file is named, with what is wrong with it.

``damage(folder)`` checks a checkpoint folder cheaply before anything loads it: every file is
non-empty and complete by its format (a safetensors header and the data it announces, a torch zip
archive's central directory, JSON that parses).
"""

from __future__ import annotations

import contextlib
import errno
import json
import pickle
import shutil
import struct
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import UserError, first_line


class DamagedFile(UserError):
    """A file of a run directory that cannot be read as what it should be."""

    def __init__(self, path: Path, problem: str, *, hint: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(f"{path} {problem}", hint=hint)


def load_data(path: Path, *, map_location: Any = None) -> Any:
    """A file written by ``torch.save``, read as data only: tensors, numbers, strings, lists, dicts.

    A file that holds anything else (a pickled object or a payload that would run code) is refused with
    a ``DamagedFile`` and nothing in it runs; so is a truncated or empty file.
    """
    path = Path(path)
    if (problem := file_problem(path)) is not None:
        raise DamagedFile(path, problem)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise DamagedFile(path, "holds more than tensors and plain values (objects or code); it was not loaded",
                          hint="files in a run directory are read as data only; rewrite it with torch.save of "
                               "tensors, numbers, lists and dicts") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise DamagedFile(path, f"cannot be read ({first_line(e)})") from None


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def refuse_code(paths: Iterable[Path], allowed: Sequence[type] = ()) -> None:
    """Reads the pickles of `paths` (files written by ``torch.save``) without running them and raises a
    ``DamagedFile`` for the first that names anything besides tensors, plain values and the `allowed`
    types; a damaged file is named likewise. Every process that reads the same files decides the same."""
    names = {_type_name(t) for t in allowed}
    for path in paths:
        if (problem := file_problem(path)) is not None:
            raise DamagedFile(path, problem)
        try:
            unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - names)
        except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise DamagedFile(path, f"cannot be read ({first_line(e)})") from None
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
            raise DamagedFile(path, f"names Python code or objects that are not data ({shown}); it was not loaded",
                              hint="files in a run directory are read as data only; this one was not written "
                                   "by the backend that reads it")


@contextlib.contextmanager
def data_only_loads(allowed: Sequence[type] = ()) -> Iterator[None]:
    """Within the block every ``torch.load``, a library's own included (DeepSpeed's checkpoint readers ask
    for ``weights_only=False``), reads data only: tensors, plain values and the `allowed` types (classes
    whose state is set as attributes, enums). A file that holds anything else is a ``DamagedFile``."""
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(list(allowed)):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError:
            raise DamagedFile(Path(str(f)), "holds Python code or objects that are not data; it was not loaded",
                              hint="files in a run directory are read as data only") from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _safetensors_problem(path: Path, size: int) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "is truncated (no safetensors header)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return "is truncated (its safetensors header is cut short)"
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a table)"
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        return f"is truncated ({size} bytes; its header announces {8 + n + end})"
    return None


def file_problem(path: Path) -> str | None:
    """What is wrong with one file of a checkpoint, judged by its format without loading it; None if
    nothing is."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is empty"
    try:
        if path.suffix == ".safetensors":
            return _safetensors_problem(path, size)
        if path.suffix in (".pt", ".pth", ".bin") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:  # reads the central directory, which a truncated file lacks
                z.namelist()
            return None
        if path.suffix in (".pt", ".pth"):
            return "is truncated or not a torch file (no complete zip archive)"
        if path.suffix == ".json":
            json.loads(path.read_text())
    except (OSError, zipfile.BadZipFile):
        return "is truncated or not a torch file (no complete zip archive)"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"is not valid JSON ({e})"
    return None


def damage(folder: Path) -> list[tuple[Path, str]]:
    """Every damaged file in a checkpoint folder, with what is wrong; ``engine.json`` must also hold the
    iteration. Empty when the folder is complete."""
    found = [(p, problem) for p in sorted(folder.rglob("*")) if p.is_file() and (problem := file_problem(p))]
    engine = folder / "engine.json"
    if not engine.is_file():
        found.append((engine, "is missing"))
    elif not any(p == engine for p, _ in found):
        state = json.loads(engine.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
            found.append((engine, "does not hold the iteration"))
    return found


def no_space(error: BaseException, where: Path) -> bool:
    """Whether a failed write under `where` failed for lack of space: an OSError saying so, or another
    writer's error (torch's own writer reports a full disk in its own words) on a file system with
    less than 16 MiB left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(where).free < 16 * 2**20
    except OSError:
        return False
