"""The shapes prompt source: 146 training compositions and 16 held out."""

from __future__ import annotations

from typing import Annotated

from grpo.core.schema import Doc, Range

from .world import split_scenes


class ShapesPrompts:
    """Training captions of the shapes world; evaluation on them and on held-out compositions."""

    def __init__(
        self,
        *,
        eval_train_samples: Annotated[int, Range(ge=0), Doc("evaluation images per training prompt")] = 2,
        eval_held_out_samples: Annotated[int, Range(ge=0), Doc("evaluation images per held-out prompt")] = 20,
    ) -> None:
        self.eval_train_samples, self.eval_held_out_samples = eval_train_samples, eval_held_out_samples
        train, held = split_scenes()
        self._train = [s.caption for s in train]
        self._held = [s.caption for s in held]

    def train_prompts(self) -> list[str]:
        return list(self._train)

    def eval_sets(self) -> dict[str, list[str]]:
        sets = {}
        if self.eval_train_samples:
            sets["train"] = [p for p in self._train for _ in range(self.eval_train_samples)]
        if self.eval_held_out_samples:
            sets["held-out"] = [p for p in self._held for _ in range(self.eval_held_out_samples)]
        return sets
