"""What the reward plugins share: files named in a recipe, and where a model runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from grpo.core import hub

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def require_path(value: str, where: str, env: str, what: str, patterns: Sequence[str] | None = None,
                 companions: Sequence[str] = ()) -> Path:
    """The file or folder `value` names, a local path or a Hugging Face Hub id (``owner/name``,
    ``owner/name:file``), or a UserError naming the recipe key, the variable to set and, for an id
    the cache lacks offline, the command that fetches it. `patterns` choose what of a repository
    is downloaded (None: a local path only, for files that are not weights); `companions` are files
    fetched beside a single file."""
    return hub.resolve(value, where=where, what=what, patterns=patterns, companions=companions, env=env)


def placement(device: str, precision: str) -> tuple[torch.device, torch.dtype]:
    """("auto" → cuda when there is one) and the weights' dtype."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device), DTYPES[precision]
