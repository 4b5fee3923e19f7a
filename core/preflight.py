"""Before any weights load: does every file and folder a recipe names exist, and every optional
package its settings need? All problems at once."""

from __future__ import annotations

import os
from pathlib import Path

from . import hub
from .config import Recipe
from .errors import UserError, UserErrors

# Options that name a file or folder, whatever the plugin.
PATH_OPTIONS = ("path", "base", "tokenizer", "processor", "head", "template_file", "config_file", "eval_path")


def missing_paths(recipe: Recipe) -> list[UserError]:
    """One error per path option of the recipe's components that names nothing on disk. Only the
    options a registration lists in ``hub_patterns`` accept a Hub id."""
    errors = []
    for comp in (recipe.model, recipe.prompts, recipe.backend, *recipe.rewards):
        entry = comp.entry
        for key in PATH_OPTIONS:
            value = comp.options.get(key)
            if not isinstance(value, str) or not value:
                continue
            ref = hub.hub_ref(value) if key in entry.hub_patterns else None
            if ref is not None:  # a Hub id: the run downloads what the cache lacks, unless offline
                patterns = entry.hub_patterns[key]
                if hub.offline() and hub.cached(ref, patterns) is None:
                    errors.append(UserError(f"{str(ref)!r} is not in the Hugging Face cache and HF_HUB_OFFLINE "
                                            "is set", where=f"{comp.where}.{key}",
                                            hint="fetch it: " + hub.fetch_command(
                                                ref, patterns, entry.hub_companions.get(key, ()))))
                continue
            if not Path(os.path.expanduser(value)).exists():
                source = entry.sources.get(key)
                errors.append(UserError(f"{value!r} does not exist", where=f"{comp.where}.{key}",
                                        hint=f"get it: {source}" if source else "fix the path"))
    return errors


def missing_packages(recipe: Recipe) -> list[UserError]:
    """The optional packages the recipe's settings need and this environment lacks."""
    errors = []
    if recipe.logging.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            errors.append(UserError("logging.wandb = true needs the wandb package, which is not installed",
                                    where="logging.wandb",
                                    hint="pip install 'grpo[wandb]' (or pip install wandb), or set logging.wandb = false"))
    return errors


def check_paths(recipe: Recipe) -> None:
    """Every missing file, folder, Hub download (offline) and optional package at once."""
    errors = missing_paths(recipe) + missing_packages(recipe)
    if errors:
        raise UserErrors(errors)
