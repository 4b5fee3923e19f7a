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
        self.last = time.perf_counter()

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start(self, total: int, done: int) -> None:
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
        parts.append(f"clip {metrics.get('update/clip_fraction', 0.0):.2f}")
        parts.append(f"{metrics.get('time/iteration', 0.0):.1f}s/it")
        self.progress.update(self.task, completed=iteration + 1, info=" | ".join(parts))

    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        shown = []
        for key, value in metrics.items():
            if key.startswith("time/") or key.endswith(("/ci95", "/score")) or key.count("/") > 1 and not key.endswith("/exact"):
                continue
            ci = metrics.get(f"{key}/ci95", 0.0)
            shown.append(f"{key} {value:.3f}±{ci:.3f}")
        self.progress.console.print(f"[cyan]eval @ {iteration}[/]: " + ", ".join(shown[:8]))
