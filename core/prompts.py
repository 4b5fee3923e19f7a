"""The PromptSource protocol."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class PromptSource(Protocol):
    """Training prompts and named evaluation sets."""

    def train_prompts(self) -> list[str]:
        """Prompts drawn for training (non-empty)."""
        ...

    def eval_sets(self) -> dict[str, list[str]]:
        """Named evaluation prompt sets, e.g. ``{"train": [...], "held-out": [...]}``."""
        ...
