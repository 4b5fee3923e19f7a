"""What the reward plugins share: files named in a recipe, and where a model runs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from grpo.core.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def require_path(value: str, where: str, env: str, what: str) -> Path:
    """The file or folder `value`, or a UserError naming the recipe key and the variable to set."""
    if not value:
        raise UserError(f"no {what} given", where=where, hint=f"set {where} = \"${{{env}}}\" and export {env}=/path/to/it")
    p = Path(os.path.expanduser(value))
    if not p.exists():
        raise UserError(f"{what} {str(p)!r} does not exist", where=where,
                        hint=f"download it there, or point {env} (or {where}) at it")
    return p


def placement(device: str, precision: str) -> tuple[torch.device, torch.dtype]:
    """("auto" → cuda when there is one) and the weights' dtype."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device), DTYPES[precision]
