"""The Policy protocol: a model adapter the engine samples from and trains."""

from __future__ import annotations

from collections.abc import Callable
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
            v = vars(self)[f.name]
            values[f.name] = v.index_select(0, index.to(v.device)) if isinstance(v, torch.Tensor) else v
        return type(self)(**values)

    def to(self, device: torch.device | str) -> Conditioning:
        values = {f.name: vars(self)[f.name] for f in fields(self)}
        return type(self)(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


@runtime_checkable
class Policy(Protocol):
    """A text-to-image (or video) flow-matching model.

    Attributes:
        denoiser: the trainable ``torch.nn.Module`` (handed to the backend).
        latent_shape: shape of one latent, e.g. (3, 32, 32) or (16, F, H, W).
        media: ``"image"`` or ``"video"``.
        fps: optional (default 0: not a video); frames per second of a video model's output, which
            video rewards with ``fps = 0`` are told.

    Optional members, with their defaults (``grpo.core.abilities``): ``snapshot_reference()``
    (default: a KL penalty is refused with a recipe error) and ``place_reference(place)`` (default:
    nothing); ``noise_grid()`` (default: ``latent_shape``), the latent grid (C, ..., H, W) on which
    exploration noise is tiled, with ``to_noise_grid(x)`` and ``from_noise_grid(g)`` converting
    latents to and from it (default: unchanged) — FLUX, whose latents are packed 2×2 patches, tiles
    its unpacked latent. A policy class may also offer ``noise_grid_for(options)``, a classmethod
    giving that grid from its recipe options without reading weights (None when it cannot), so
    that ``grpo validate`` checks the sampler's ``noise_block`` against it. ``sigma_schedule()``
    (default: None, the sampler's own grid) gives the σ grid the model samples on, as the unshifted
    times of a T-step grid and their shift (None: the sampler's), which the engine puts on the
    sampler (``grpo.core.sampler.follow_model_grid``); a classmethod ``sigma_schedule_for(options)``
    may give it before weights load (``grpo validate`` and ``grpo plan``).
    """

    denoiser: torch.nn.Module
    latent_shape: tuple[int, ...]
    media: str
    fps: int

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
        """A context in which ``velocity`` is the frozen base policy (for a KL penalty)."""
        ...

    def snapshot_reference(self) -> None:
        """Take the frozen copy ``reference()`` predicts with; called before the backend wraps the
        denoiser, when the objective needs a reference (a KL term: the clipped ratio's ``kl_beta`` > 0)."""
        ...

    def place_reference(self, place: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Replace the frozen copy with ``place(copy)``, which a ZeRO-3 backend partitions over the
        ranks like the trained model; called after the backend's setup."""
        ...
