"""A rich progress bar with live metrics for `grpo run`."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .common import console


class RichReporter:
    """Draws iterations as a bar with the current stage and the latest metrics."""

    def __init__(self, reward_keys: list[str]) -> None:
        self.reward_keys = reward_keys
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stage]:<16} {task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.task = None
        self.minutes = False
        self.last = time.perf_counter()

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, total: int, done: int, budget: float = 0.0, elapsed: float = 0.0) -> None:
        """A bar of iterations; of training minutes when the run has a time budget (`budget` seconds)."""
        self.minutes = bool(budget)
        if self.minutes:
            self.task = self.progress.add_task("training minutes", total=round(budget / 60.0, 2),
                                               completed=elapsed / 60.0, stage="", info="")
        else:
            self.task = self.progress.add_task("training", total=total, completed=done, stage="", info="")

    def stage(self, name: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, stage=name)

    def iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        parts = []
        for key in self.reward_keys:
            value = metrics.get(f"reward/{key}/mean")
            if value is not None:
                parts.append(f"{key} {value:.3f}")
        if "update/clip_fraction" in metrics:  # the clipped ratio's
            parts.append(f"clip {metrics['update/clip_fraction']:.2f}")
        parts.append(f"{metrics.get('time/iteration', 0.0):.1f}s/it")
        if self.minutes:
            parts.insert(0, f"it {iteration + 1}")
        done = metrics.get("time/elapsed", 0.0) / 60.0 if self.minutes else iteration + 1
        self.progress.update(self.task, completed=done, info=" | ".join(parts))

    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        shown = []
        for key, value in metrics.items():
            if key.startswith("time/") or key.endswith(("/ci95", "/score")) or key.count("/") > 1 and not key.endswith("/exact"):
                continue
            ci = metrics.get(f"{key}/ci95", 0.0)
            shown.append(f"{key} {value:.3f}±{ci:.3f}")
        self.progress.console.print(f"[cyan]eval @ {iteration}[/]: " + ", ".join(shown[:8]))
