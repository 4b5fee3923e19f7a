"""Run outputs: ``metrics.jsonl``, TensorBoard events and, when asked for, a Weights & Biases run."""

from __future__ import annotations

import json
import logging
import math
import secrets
import string
from pathlib import Path
from typing import Any

import torch

from .errors import UserError, first_line
from .rundir import METRICS, RESOLVED, TENSORBOARD, WANDB_ID
from .tomlfile import load_toml

log = logging.getLogger(__name__)


def read_jsonl(path: Path, *, quiet: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file of a run. A line that is not a whole record (what a full disk or
    a power cut leaves at the end) is skipped, with a warning unless `quiet`."""
    return [record for _, record in _lines(path, quiet=quiet)]


def _lines(path: Path, *, quiet: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            out.append((line, record))
        elif not quiet:
            log.warning("%s: line %d is not a complete record (a write cut short?); skipped", path, number)
    return out


def truncate_jsonl(path: Path, start_iteration: int) -> None:
    """Drop the records of iterations >= `start_iteration` from a JSON-lines file (all of them for 0), and
    any line that is not a whole record."""
    if not path.exists():
        return
    if start_iteration == 0:
        path.unlink()
        return
    kept = [line for line, r in _lines(path, quiet=False) if r["iteration"] < start_iteration]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _scalars(kind: str, values: dict[str, Any]) -> dict[str, float]:
    return {f"{kind}/{k}": v for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class WandbRun:
    """The run's mirror in Weights & Biases: the same scalars as TensorBoard against ``iteration``,
    sample grids as images, videos as videos, the resolved recipe as the run's config.

    The wandb run's id is kept in ``RUN/wandb-run.json``, so that a resumed run continues the same
    wandb run; its local files are under ``RUN/wandb`` (offline runs too, for `wandb sync`).
    """

    def __init__(self, run_dir: Path, *, project: str, entity: str, name: str, mode: str,
                 config: dict[str, Any] | None = None) -> None:
        """`config` defaults to the run's ``recipe.resolved.toml``, the parts that ran included."""
        import wandb

        if config is None:
            config = load_toml(run_dir / RESOLVED)

        self._wandb = wandb
        id_file = run_dir / WANDB_ID
        run_id = json.loads(id_file.read_text())["id"] if id_file.is_file() else "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's id alphabet
        try:
            self.run = wandb.init(project=project, entity=entity or None, name=name or run_dir.name, mode=mode,
                                  dir=str(run_dir), config=config, id=run_id, resume="allow",
                                  settings=wandb.Settings(console="off"))
        except wandb.errors.Error as e:  # not logged in, no network, an unknown entity …
            raise UserError(f"Weights & Biases could not start the run: {first_line(e)}", where="logging.mode",
                            hint="log in with `wandb login` (or export WANDB_API_KEY), or set logging.mode = "
                                 "\"offline\" and upload later with `wandb sync`; then continue with "
                                 f"grpo run --resume {run_dir}") from None
        id_file.write_text(json.dumps({"id": run_id, "project": project, "entity": entity, "mode": mode}) + "\n")
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")

    def scalars(self, iteration: int, kind: str, values: dict[str, Any]) -> None:
        self.run.log({**_scalars(kind, values), "iteration": iteration})

    def image(self, tag: str, image: torch.Tensor, iteration: int) -> None:
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        self.run.log({tag: self._wandb.Image(pixels), "iteration": iteration})

    def video(self, tag: str, path: Path, iteration: int) -> None:
        """The animated grid already written, uploaded as a video: its frames carry their duration
        (1/fps of the model), so it plays at the model's frame rate."""
        self.run.log({tag: self._wandb.Video(str(path), format="gif"), "iteration": iteration})

    def close(self) -> None:
        self.run.finish()


class RunLog:
    """Appends one JSON line per record and mirrors scalars (and images) to TensorBoard and, when
    ``wandb`` options are given, to a Weights & Biases run.

    On resume, records from ``start_iteration`` on are dropped (they will be written again) and
    TensorBoard purges its events from that step; the wandb run is the same one, continued.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, start_iteration: int = 0,
                 wandb: dict[str, Any] | None = None) -> None:
        self.path = run_dir / METRICS
        truncate_jsonl(self.path, start_iteration)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=start_iteration or None)
        self.wandb = WandbRun(run_dir, **wandb) if wandb is not None else None

    def write(self, iteration: int, kind: str, values: dict[str, Any]) -> None:
        record = {"iteration": iteration, "kind": kind, **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, allow_nan=True) + "\n")
        if self.writer is not None:
            for key, value in _scalars(kind, values).items():
                self.writer.add_scalar(key, value, iteration)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.scalars(iteration, kind, values)

    def image(self, tag: str, image: torch.Tensor, iteration: int) -> None:
        """Log an image (3, H, W) float [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, iteration)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.image(tag, image, iteration)

    def animation(self, tag: str, gif: bytes, width: int, height: int, iteration: int, *,
                  path: Path | None = None) -> None:
        """Log an animated GIF (TensorBoard shows it in its Images tab, as its own video summaries do;
        wandb as a video, from the file at `path`)."""
        if self.writer is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
            self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), iteration)
            self.writer.flush()
        if self.wandb is not None and path is not None:
            self.wandb.video(tag, path, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()


def read_metrics(run_dir: Path, *, quiet: bool = False) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (each with ``iteration`` and ``kind``); see `read_jsonl`."""
    return [r for r in read_jsonl(Path(run_dir) / METRICS, quiet=quiet) if isinstance(r.get("kind"), str)]
