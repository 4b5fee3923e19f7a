"""Before any weights load: does every file and folder a recipe names exist? All problems at once."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError, UserErrors
from .recipe import Recipe

# Options that name a file or folder, whatever the plugin.
PATH_OPTIONS = ("path", "base", "tokenizer", "processor", "head", "template_file", "config_file", "eval_path")


def missing_paths(recipe: Recipe) -> list[UserError]:
    """One error per path option of the recipe's components that names nothing on disk."""
    errors = []
    for comp in (recipe.model, recipe.prompts, recipe.backend, *recipe.rewards):
        sources = getattr(comp.entry.factory, "sources", {})
        for key in PATH_OPTIONS:
            value = comp.options.get(key)
            if not isinstance(value, str) or not value:
                continue
            if not Path(os.path.expanduser(value)).exists():
                source = sources.get(key)
                errors.append(UserError(f"{value!r} does not exist", where=f"{comp.where}.{key}",
                                        hint=f"get it: {source}" if source else "fix the path"))
    return errors


def check_paths(recipe: Recipe) -> None:
    errors = missing_paths(recipe)
    if errors:
        raise UserErrors(errors)
