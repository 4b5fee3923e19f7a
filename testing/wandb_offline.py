"""Read an offline Weights & Biases run back from its files, without wandb's servers: the run's id
and project, its config, and its history rows (as logged, one dict per ``log`` call)::

    from grpo.testing.wandb_offline import read_offline_runs

    (run,) = read_offline_runs("runs/my-run/wandb")
    run.history[0]["train/reward/mean"]

The ``run-<id>.wandb`` file is wandb's transaction log: a 7-byte header (":W&B", a magic number, a
version), then 32 KiB blocks of records, each a checksum (4 bytes), a length (2), a type (1:
whole, 2/3/4: first/middle/last piece) and a piece of one protobuf ``Record``.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7  # ":W&B" + magic (2 bytes) + version


@dataclass
class OfflineRun:
    folder: Path
    id: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def _records(data: bytes) -> list[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a wandb transaction log")
    out, piece, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != checksum:
            raise ValueError(f"corrupt record at byte {pos}")
        pos += 7 + length
        piece = chunk if kind in (1, 2) else piece + chunk
        if kind in (1, 4):
            out.append(piece)
    return out


def read_offline_run(folder: str | Path, wait: float = 60.0) -> OfflineRun:
    """One ``offline-run-*`` folder. wandb's service may still be writing the log of a run that has
    just finished: the log is read again until it holds the run's closing record, for at most
    `wait` seconds (then what is there is returned)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            run, closed = _parse(Path(folder))
        except ValueError:  # a record being written
            run, closed = OfflineRun(Path(folder)), False
        if closed or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _parse(folder: Path) -> tuple[OfflineRun, bool]:
    from wandb.proto import wandb_internal_pb2 as pb

    logs = list(folder.glob("run-*.wandb"))
    run, closed = OfflineRun(folder), False
    if len(logs) != 1:
        return run, closed
    for raw in _records(logs[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        closed = closed or kind == "exit"
        if kind == "run":
            run.id, run.project = record.run.run_id, record.run.project
            run.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:  # a media value comes as one item per field of its dict
                path = [item.key] if item.key else list(item.nested_key)
                node = row
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = json.loads(item.value_json)
            run.history.append({k: v for k, v in row.items() if not k.startswith("_")})  # not wandb's own
    run.config.pop("_wandb", None)
    return run, closed


def read_offline_runs(wandb_dir: str | Path) -> list[OfflineRun]:
    """Every offline run under a ``wandb`` folder, oldest first."""
    return [read_offline_run(f) for f in sorted(Path(wandb_dir).glob("offline-run-*"))]
