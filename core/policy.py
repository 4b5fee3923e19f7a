"""The Policy protocol: a model adapter the engine samples from and trains."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Conditioning:
    """Base of a model's prompt embeddings: a dataclass of tensors whose first dimension is the prompt.

    Subclasses add their fields (e.g. ``hidden``, ``mask``, ``pooled``); ``select`` and ``to`` work
    on every tensor field.
    """

    def select(self, index: torch.Tensor) -> Conditioning:
        """The embeddings of prompts `index` (long (M,)), in that order (repeats allowed)."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.index_select(0, index.to(v.device)) if isinstance(v, torch.Tensor) else v
        return type(self)(**values)

    def to(self, device: torch.device | str) -> Conditioning:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


@runtime_checkable
class Policy(Protocol):
    """A text-to-image (or video) flow-matching model.

    Attributes:
        denoiser: the trainable ``torch.nn.Module`` (handed to the backend).
        latent_shape: shape of one latent, e.g. (3, 32, 32) or (16, F, H, W).
        media: ``"image"`` or ``"video"``.
    """

    denoiser: torch.nn.Module
    latent_shape: tuple[int, ...]
    media: str

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Embeddings of `prompts` (no gradient; cached by the engine per prompt set)."""
        ...

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Predicted velocity v = ε − x0 for latents x (N, *latent_shape) at noise levels σ (N,)."""
        ...

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) or videos (N, F, 3, H, W), float in [0, 1], from clean latents."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (all of the denoiser, or only LoRA adapters)."""
        ...

    def reference(self) -> AbstractContextManager[None]:
        """A context in which ``velocity`` is the frozen base policy (for a KL penalty).

        Two optional methods serve a policy that keeps a frozen copy for it: ``snapshot_reference()``
        (called before the backend wraps the denoiser) takes the copy, and
        ``place_reference(place)`` (called after) replaces the copy with ``place(copy)``, which a
        ZeRO-3 backend partitions over the ranks like the trained model.
        """
        ...
