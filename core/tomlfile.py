"""Reading a TOML file (a recipe, a run's resolved recipe) with errors a user can act on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_utf8(path: str | Path, *, hint: str, where: str | None = None) -> str:
    """A text file's contents; a file that is not UTF-8 is a UserError naming the first bad byte."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8)",
                        where=where, hint=hint) from None


def nested_too_deeply(path: str | Path) -> UserError:
    """The error of a recipe whose tables or arrays nest deeper than Python's recursion allows."""
    return UserError(f"{path}: its tables or arrays are nested too deeply to read",
                     hint="a recipe nests a few levels: [strategy.objective], lists of numbers")


def load_toml(path: str | Path) -> dict[str, Any]:
    """The table of a TOML file; a missing file, a file that is not UTF-8 text, or invalid TOML is a
    UserError naming the file (and the line and column)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"recipe {str(path)!r} does not exist", hint="give the path of a .toml recipe, e.g. recipes/shapes_dance.toml")
    text = read_utf8(file, hint="give a TOML recipe, e.g. recipes/shapes_dance.toml")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}", hint="fix the syntax at the line and column given") from None
    except RecursionError:
        raise nested_too_deeply(path) from None
