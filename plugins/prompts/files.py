"""Prompts from files: plain text (one prompt per line) or JSONL (a "prompt" field per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from grpo.core.errors import UserError
from grpo.core.schema import Doc, Range
from grpo.core.tomlfile import read_utf8


def read_prompts(path: str, where: str) -> list[str]:
    """Read prompts from a .txt (one per line, blank lines skipped) or .jsonl file."""
    file = Path(path)
    if not file.exists():
        raise UserError(f"prompt file {path!r} does not exist", where=where, hint="give the path of a .txt or .jsonl file")
    if not file.is_file():
        kind = "a folder" if file.is_dir() else "not a regular file (a pipe or a device)"
        raise UserError(f"prompt file {path!r} is {kind}", where=where, hint="give the path of a .txt or .jsonl file")
    prompts: list[str] = []
    lines = read_utf8(file, where=where, hint="save the prompt file as UTF-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if file.suffix == ".jsonl":
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: not valid JSON ({e.msg})", where=where,
                    hint='each line must be an object like {"prompt": "a cat"}',
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise UserError(
                    f"{path}:{lineno}: no string field 'prompt'", where=where,
                    hint='each line must be an object like {"prompt": "a cat"}',
                )
            text = record["prompt"]
        prompts.append(text)
    if not prompts:
        raise UserError(f"prompt file {path!r} holds no prompts", where=where)
    return prompts


class FilePrompts:
    """Training prompts from a file; optional evaluation prompts from another."""

    file_options = ("path", "eval_path")  # each names a file, never a folder (grpo doctor checks)
    sources = {"path": "HPDv2 training prompts: the prompt column of the ymhao/HPDv2 dataset on the Hugging Face "
                       "hub, one per line (DanceGRPO ships them as assets/prompts.txt); video prompts: "
                       "VidProM or your own, one per line",
               "eval_path": "any prompt file; HPDv2's test prompts for the paper's evaluation"}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("a .txt (one prompt per line) or .jsonl file")],
        eval_path: Annotated[str, Doc("evaluation prompts (default: the first eval_count training prompts)")] = "",
        eval_count: Annotated[int, Range(ge=0), Doc("evaluation prompts taken when eval_path is empty")] = 16,
    ) -> None:
        self._train = read_prompts(path, "prompts.path")
        self._eval = read_prompts(eval_path, "prompts.eval_path") if eval_path else self._train[:eval_count]

    def train_prompts(self) -> list[str]:
        return list(self._train)

    def eval_sets(self) -> dict[str, list[str]]:
        return {"eval": list(self._eval)} if self._eval else {}
