"""What the model plugins share: the frozen base policy of a KL penalty, and exporting trained weights."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch


class FrozenReference:
    """Mixin for a policy with `denoiser` and `lora_rank`: ``reference()`` switches LoRA adapters off,
    or, for a full fine-tune, swaps in a frozen copy of the denoiser taken by ``snapshot_reference()``
    (which a ZeRO-3 backend may partition through ``place_reference``). Forward through ``_active()``."""

    denoiser: torch.nn.Module
    lora_rank: int
    _base: torch.nn.Module | None = None
    _reference: torch.nn.Module | None = None

    def _active(self) -> torch.nn.Module:
        """The module ``velocity`` runs: the frozen copy inside ``reference()``, else the trained one."""
        return self._reference if self._reference is not None else self.denoiser

    @contextmanager
    def reference(self):
        if self.lora_rank > 0:
            self.denoiser.disable_adapters()
            try:
                yield
            finally:
                self.denoiser.enable_adapters()
            return
        if self._base is None:
            raise RuntimeError("call snapshot_reference() before training with a KL penalty")
        self._reference = self._base
        try:
            yield
        finally:
            self._reference = None

    def snapshot_reference(self) -> None:
        """Keep a frozen copy of the current denoiser (full fine-tune only; LoRA needs none)."""
        if self.lora_rank == 0 and self._base is None:
            self._base = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    def place_reference(self, place) -> None:
        """Hand the frozen copy to the backend (`place(module) -> module`), e.g. to be partitioned."""
        if self._base is not None:
            self._base = place(self._base)


def merged_copy(denoiser: torch.nn.Module, lora_rank: int, directory: Path) -> torch.nn.Module:
    """A CPU copy of `denoiser` with its LoRA adapters merged into the weights; the adapters alone go
    to ``directory/lora/adapter.safetensors``. Without adapters, a plain copy."""
    module = copy.deepcopy(denoiser).cpu()
    if lora_rank > 0:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        (Path(directory) / "lora").mkdir(parents=True, exist_ok=True)
        adapter = {k: v.contiguous() for k, v in get_peft_model_state_dict(module).items()}
        save_file(adapter, str(Path(directory) / "lora" / "adapter.safetensors"))
        module.fuse_lora()
        module.unload_lora()
    return module
