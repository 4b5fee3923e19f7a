"""Run outputs: ``metrics.jsonl`` and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .rundir import METRICS, TENSORBOARD


def truncate_jsonl(path: Path, start_iteration: int) -> None:
    """Drop the records of iterations >= `start_iteration` from a JSON-lines file (all of them for 0)."""
    if not path.exists():
        return
    if start_iteration == 0:
        path.unlink()
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) < start_iteration]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


class RunLog:
    """Appends one JSON line per record and mirrors scalars (and images) to TensorBoard.

    On resume, records from ``start_iteration`` on are dropped (they will be written again) and
    TensorBoard purges its events from that step.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, start_iteration: int = 0) -> None:
        self.path = run_dir / METRICS
        truncate_jsonl(self.path, start_iteration)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=start_iteration or None)

    def write(self, iteration: int, kind: str, values: dict[str, Any]) -> None:
        record = {"iteration": iteration, "kind": kind, **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, iteration)
            self.writer.flush()

    def image(self, tag: str, image: torch.Tensor, iteration: int) -> None:
        """Log an image (3, H, W) float [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, iteration)
            self.writer.flush()

    def animation(self, tag: str, gif: bytes, width: int, height: int, iteration: int) -> None:
        """Log an animated GIF (TensorBoard shows it in its Images tab, as its own video summaries do)."""
        if self.writer is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
            self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), iteration)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
