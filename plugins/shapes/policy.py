"""The `shapes` model plugin: the tiny text-to-image flow-matching model as a Policy."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch

from grpo.core.errors import UserError
from grpo.core.policy import Conditioning
from grpo.core.schema import Doc, Range

from ..policies import FrozenReference, merged_copy

BUNDLED = Path(__file__).parent / "weights" / "base"


def _model():
    """The model code (diffusers and transformers), imported when a policy is built, not registered."""
    from . import model

    return model


@dataclass
class ShapesConditioning(Conditioning):
    hidden: torch.Tensor  # (N, L, D) text-encoder states
    mask: torch.Tensor  # (N, L) attention mask
    pooled: torch.Tensor  # (N, D)
    null_hidden: torch.Tensor  # (N, L, D) of the empty caption, for classifier-free guidance
    null_mask: torch.Tensor
    null_pooled: torch.Tensor


class ShapesPolicy(FrozenReference):
    """The embedded shapes model: a pixel-space UNet2DConditionModel with a tiny CLIP text encoder."""

    latent_shape = (3, 32, 32)

    @classmethod
    def noise_grid_for(cls, options: dict) -> tuple[int, ...]:
        """The shapes world's latent, 3×32×32, whatever the options (known without weights)."""
        return cls.latent_shape
    media = "image"
    requires = ("diffusers", "transformers", "tokenizers")
    bundled = {"path": BUNDLED}  # what an empty model.path loads
    sources = {"path": "a folder written by `python -m grpo.plugins.shapes.pretrain --export DIR`, "
                       "or leave model.path empty for the bundled weights"}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("model folder (tokenizer/, text_encoder/, unet/); empty = bundled")] = "",
        guidance_scale: Annotated[float, Range(ge=1), Doc("classifier-free guidance (1 = off)")] = 1.0,
        lora_rank: Annotated[int, Range(ge=0), Doc("LoRA rank on the UNet's attention and conv layers; 0 = full fine-tune")] = 0,
        lora_alpha: Annotated[float, Range(gt=0), Doc("LoRA alpha")] = 16.0,
        freeze: Annotated[list[str], Doc("glob patterns of UNet parameter names to keep frozen")] = [],  # noqa: B006
        device: Annotated[Literal["auto", "cpu", "cuda"], Doc("where the model runs")] = "auto",
    ) -> None:
        folder = Path(path) if path else BUNDLED
        missing = [p for p in ("tokenizer", "text_encoder", "unet") if not (folder / p).is_dir()]
        if missing:
            raise UserError(
                f"model folder {str(folder)!r} lacks {', '.join(missing)}",
                where="model.path",
                hint="point it at a folder written by `python -m grpo.plugins.shapes.pretrain --export`, "
                "or leave it empty for the bundled weights",
            )
        self.tokenizer, self.text_encoder, unet = _model().load_components(folder)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.text_encoder.to(self.device).requires_grad_(False)
        self.guidance_scale = guidance_scale
        self.lora_rank = lora_rank
        unet = unet.float().to(self.device)
        if lora_rank > 0:
            from peft import LoraConfig

            unet.requires_grad_(False)
            unet.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"],
                )
            )
        else:
            for name, p in unet.named_parameters():
                p.requires_grad_(not any(fnmatch.fnmatch(name, pat) for pat in freeze))
        self.denoiser = unet

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> ShapesConditioning:
        hidden, mask, pooled = _model().encode_text(self.tokenizer, self.text_encoder, list(prompts))
        nh, nm, np_ = _model().encode_text(self.tokenizer, self.text_encoder, [""])
        n = len(prompts)
        return ShapesConditioning(
            hidden.float(), mask, pooled.float(), nh.expand(n, -1, -1).float(), nm.expand(n, -1), np_.expand(n, -1).float()
        )

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: ShapesConditioning) -> torch.Tensor:
        unet = self._active()
        if self.guidance_scale == 1.0:
            return _model().unet_velocity(unet, x, sigma, cond.hidden, cond.mask, cond.pooled)
        both = _model().unet_velocity(
            unet,
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            torch.cat([cond.hidden, cond.null_hidden]),
            torch.cat([cond.mask, cond.null_mask]),
            torch.cat([cond.pooled, cond.null_pooled]),
        )
        v_c, v_u = both.chunk(2)
        return v_u + self.guidance_scale * (v_c - v_u)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0.float().clamp(-1.0, 1.0) + 1.0) / 2.0).cpu()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def export(self, directory: Path) -> None:
        """Write a model folder (tokenizer/, text_encoder/, unet/) that this plugin and diffusers'
        `UNet2DConditionModel.from_pretrained(directory / "unet")` load; LoRA adapters are merged into
        the weights and also written alone to ``lora/adapter.safetensors``."""
        from .model import save_components

        unet = merged_copy(self.denoiser, self.lora_rank, directory)
        save_components(directory, self.tokenizer, self.text_encoder.cpu(), unet)

