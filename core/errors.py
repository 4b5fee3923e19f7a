"""One family of errors.

``UserError`` is for mistakes a user can fix (a recipe key, a value, a path, a plugin name). The
CLI prints its message and exits with code 2, never a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GrpoError(Exception):
    """Base class of every error raised on purpose by grpo."""


class UserError(GrpoError):
    """A mistake in the user's input.

    Args:
        message: what is wrong, in one sentence.
        where: the place, e.g. a TOML path (``strategy.group_size``) or a file path.
        hint: how to fix it (valid values, the closest match, the variable to set).
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message, self.where, self.hint = message, where, hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class UserErrors(UserError):
    """Several user errors found in one pass (e.g. every invalid key of a recipe)."""

    def __init__(self, errors: list[UserError]) -> None:
        self.errors = errors
        GrpoError.__init__(self, self.render())
        self.message, self.where, self.hint = self.render(), None, None

    def render(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0].render()
        lines = [f"{len(self.errors)} problems:"]
        lines += ["- " + e.render().replace("\n", "\n  ") for e in self.errors]
        return "\n".join(lines)


class PluginError(GrpoError):
    """A plugin misbehaved (bad registration, or an exception inside it)."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to a misspelled one, or None."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name_hint(name: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    best = closest(name, choices)
    valid = ", ".join(choices) if choices else "(none)"
    return (f"did you mean {best!r}? " if best else "") + f"valid: {valid}"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
