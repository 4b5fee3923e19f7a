"""What the engine tells the outside while it runs: progress (drawn by the CLI) and the log of
ranks other than 0 (nothing)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch


class Reporter(Protocol):
    """Receives progress; the CLI draws it with rich. Every method is optional to act on."""

    def start(self, total: int, done: int, budget: float = 0.0, elapsed: float = 0.0) -> None: ...
    def stage(self, name: str) -> None: ...
    def iteration(self, iteration: int, metrics: dict[str, float]) -> None: ...
    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None: ...


class Silent:
    """A reporter that shows nothing."""

    def start(self, total: int, done: int, budget: float = 0.0, elapsed: float = 0.0) -> None: ...
    def stage(self, name: str) -> None: ...
    def iteration(self, iteration: int, metrics: dict[str, float]) -> None: ...
    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None: ...


class NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, iteration: int, kind: str, values: dict[str, Any]) -> None: ...
    def image(self, tag: str, image: torch.Tensor, iteration: int) -> None: ...
    def animation(self, tag: str, gif: bytes, width: int, height: int, iteration: int, *,
                  path: Any = None) -> None: ...
    def close(self) -> None: ...


@contextmanager
def timed(times: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``times[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[key] = times.get(key, 0.0) + time.perf_counter() - start


def update_progress(reporter: Any, total: int) -> Callable[[int], None]:
    """A micro-batch callback that shows ``update done/total`` edges."""
    done = [0]

    def on_micro_batch(n: int) -> None:
        done[0] += n
        reporter.stage(f"update {done[0]}/{total}")

    return on_micro_batch
