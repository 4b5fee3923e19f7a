"""FLUX.1, Stable Diffusion 3.5 and Wan2.1 text-to-video as policies, on diffusers' own classes.

Each loads a diffusers pipeline folder by path (a hub snapshot or `save_pretrained` output), encodes
prompts with the pipeline's own `encode_prompt` (the engine caches the result per prompt), calls the
transformer as the pipeline does and decodes with the pipeline's VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from grpo.core.errors import UserError
from grpo.core.policy import Conditioning
from grpo.core.schema import Doc, Range

from .base import DEFAULT_LORA_TARGETS, DiffusersPolicy, SigmaGrid

Precision = Literal["fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


def _multiple(value: int, of: int, where: str) -> None:
    if value % of:
        raise UserError(f"{value} is not a multiple of {of}", where=where, hint=f"use e.g. {max(of, value // of * of)}")


# -- FLUX.1 ------------------------------------------------------------------------------------------
@dataclass
class FluxConditioning(Conditioning):
    embeds: torch.Tensor  # (N, L, D) T5 states
    pooled: torch.Tensor  # (N, D') CLIP pooled
    text_ids: torch.Tensor  # (N, L, 3) positions of the text tokens (the same for every prompt)


class FluxPolicy(DiffusersPolicy):
    """FLUX.1 (dev or schnell): T5 + CLIP text encoders, packed 2×2 latents, guidance embedding."""

    pipeline_name = "FluxPipeline"
    sources = {"path": "the Hub id black-forest-labs/FLUX.1-dev (accept its licence on the Hub first)"}
    env_hint = "FLUX_PATH"

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("diffusers folder of FLUX.1 (e.g. black-forest-labs/FLUX.1-dev)")] = "",
        height: Annotated[int, Range(ge=16), Doc("image height in pixels (multiple of 16)")] = 720,
        width: Annotated[int, Range(ge=16), Doc("image width in pixels (multiple of 16)")] = 720,
        guidance: Annotated[float, Range(ge=0), Doc("distilled guidance fed to the guidance embedding (dev)")] = 3.5,
        max_sequence_length: Annotated[int, Range(ge=1, le=512), Doc("T5 tokens")] = 512,
        lora_rank: Annotated[int, Range(ge=0), Doc("LoRA rank on the transformer; 0 = full fine-tune")] = 0,
        lora_alpha: Annotated[float, Range(gt=0), Doc("LoRA alpha")] = 16.0,
        lora_targets: Annotated[list[str], Doc("module names that get adapters")] = DEFAULT_LORA_TARGETS,
        gradient_checkpointing: Annotated[bool, Doc("recompute activations in the backward pass")] = False,
        precision: Annotated[Precision, Doc("weights of every component")] = "bf16",
        sigma_grid: SigmaGrid = "pipeline",
        device: Device = "auto",
    ) -> None:
        self.sigma_grid, self.size = sigma_grid, {"height": height, "width": width}
        self.height, self.width, self.guidance, self.max_sequence_length = height, width, guidance, max_sequence_length
        self._load(path, precision=precision, device=device, lora_rank=lora_rank, lora_alpha=lora_alpha,
                   lora_targets=list(lora_targets), gradient_checkpointing=gradient_checkpointing, guidance_scale=1.0)
        f = self.pipe.vae_scale_factor * 2
        _multiple(height, f, "model.height")
        _multiple(width, f, "model.width")
        channels = self.denoiser.config.in_channels  # packed: 4 × the VAE's latent channels
        self.latent_shape = ((height // f) * (width // f), channels)
        self.img_ids = self.pipe._prepare_latent_image_ids(1, height // f, width // f, self.device, self.dtype)

    @classmethod
    def _noise_grid(cls, options: dict, vae: dict, transformer: dict) -> tuple[int, ...]:
        vf = 2 ** (len(vae["block_out_channels"]) - 1)
        return (transformer["in_channels"] // 4, options["height"] // vf, options["width"] // vf)

    @classmethod
    def _image_tokens_for(cls, options: dict, vae: dict, transformer: dict) -> int:
        """The packed latent's tokens (what FLUX's pipeline computes its shift from)."""
        packed = 2 ** len(vae["block_out_channels"])  # the VAE's factor × FLUX's 2×2 packing
        return (options.get("height", 720) // packed) * (options.get("width", 720) // packed)

    def noise_grid(self) -> tuple[int, ...]:
        """The unpacked latent (C, H, W): a noise tile is b×b latent pixels, as for every model."""
        vf = self.pipe.vae_scale_factor
        return (self.latent_shape[1] // 4, self.height // vf, self.width // vf)

    def to_noise_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Packed latents (N, tokens, 4C) → (N, C, H, W), undoing FLUX's 2×2 packing."""
        c, h, w = self.noise_grid()
        return x.reshape(x.shape[0], h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(x.shape[0], c, h, w)

    def from_noise_grid(self, g: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → packed latents (N, tokens, 4C), as FLUX's pipeline packs them."""
        n, c, h, w = g.shape
        return g.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> FluxConditioning:
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                           max_sequence_length=self.max_sequence_length)
        n = len(prompts)
        return FluxConditioning(embeds.to(self.dtype), pooled.to(self.dtype), text_ids.expand(n, -1, -1).clone())

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: FluxConditioning) -> torch.Tensor:
        model = self._active()
        guidance = None
        if model.config.guidance_embeds:
            guidance = torch.full((x.shape[0],), self.guidance, device=x.device, dtype=torch.float32)
        out = model(hidden_states=x.to(self.dtype), timestep=sigma.to(self.dtype), guidance=guidance,
                    pooled_projections=cond.pooled, encoder_hidden_states=cond.embeds, txt_ids=cond.text_ids[0],
                    img_ids=self.img_ids, return_dict=False)[0]
        return out.float()

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(x0.to(self.dtype), self.height, self.width, self.pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


# -- Stable Diffusion 3 / 3.5 ---------------------------------------------------------------------------
@dataclass
class SD3Conditioning(Conditioning):
    embeds: torch.Tensor  # (N, L, D) CLIP-L + CLIP-G + T5, concatenated as the pipeline does
    pooled: torch.Tensor  # (N, D')
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor


class SD3Policy(DiffusersPolicy):
    """Stable Diffusion 3 / 3.5: three text encoders and true classifier-free guidance."""

    pipeline_name = "StableDiffusion3Pipeline"
    sources = {"path": "the Hub id stabilityai/stable-diffusion-3.5-medium (accept its licence on the Hub first)"}
    env_hint = "SD35_PATH"

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("diffusers folder of SD3.5 (e.g. stabilityai/stable-diffusion-3.5-medium)")] = "",
        height: Annotated[int, Range(ge=16), Doc("image height in pixels (multiple of the VAE factor × patch)")] = 512,
        width: Annotated[int, Range(ge=16), Doc("image width in pixels")] = 512,
        guidance_scale: Annotated[float, Range(ge=1), Doc("classifier-free guidance (1 = off)")] = 4.5,
        negative_prompt: Annotated[str, Doc("prompt of the unconditional branch")] = "",
        max_sequence_length: Annotated[int, Range(ge=1, le=512), Doc("T5 tokens")] = 256,
        lora_rank: Annotated[int, Range(ge=0), Doc("LoRA rank on the transformer; 0 = full fine-tune")] = 0,
        lora_alpha: Annotated[float, Range(gt=0), Doc("LoRA alpha")] = 16.0,
        lora_targets: Annotated[list[str], Doc("module names that get adapters")] = DEFAULT_LORA_TARGETS,
        gradient_checkpointing: Annotated[bool, Doc("recompute activations in the backward pass")] = False,
        precision: Annotated[Precision, Doc("weights of every component")] = "bf16",
        sigma_grid: SigmaGrid = "pipeline",
        device: Device = "auto",
    ) -> None:
        self.sigma_grid, self.size = sigma_grid, {"height": height, "width": width}
        self.negative_prompt, self.max_sequence_length = negative_prompt, max_sequence_length
        self._load(path, precision=precision, device=device, lora_rank=lora_rank, lora_alpha=lora_alpha,
                   lora_targets=list(lora_targets), gradient_checkpointing=gradient_checkpointing,
                   guidance_scale=guidance_scale)
        f = self.pipe.vae_scale_factor * self.denoiser.config.patch_size
        _multiple(height, f, "model.height")
        _multiple(width, f, "model.width")
        vf = self.pipe.vae_scale_factor
        self.latent_shape = (self.denoiser.config.in_channels, height // vf, width // vf)

    @classmethod
    def _image_tokens_for(cls, options: dict, vae: dict, transformer: dict) -> int:
        """The transformer's patches of the latent (what SD3's pipeline computes a dynamic shift from)."""
        f = 2 ** (len(vae["block_out_channels"]) - 1) * transformer.get("patch_size", 2)
        return (options.get("height", 512) // f) * (options.get("width", 512) // f)

    @classmethod
    def _noise_grid(cls, options: dict, vae: dict, transformer: dict) -> tuple[int, ...]:
        vf = 2 ** (len(vae["block_out_channels"]) - 1)
        return (transformer["in_channels"], options["height"] // vf, options["width"] // vf)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> SD3Conditioning:
        n = len(prompts)
        pe, npe, pooled, npooled = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=True, negative_prompt=[self.negative_prompt] * n,
            max_sequence_length=self.max_sequence_length)
        return SD3Conditioning(pe.to(self.dtype), pooled.to(self.dtype), npe.to(self.dtype), npooled.to(self.dtype))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: SD3Conditioning) -> torch.Tensor:
        def run(x, sigma, c):
            embeds, pooled = c
            return self._active()(hidden_states=x.to(self.dtype), timestep=sigma.float() * 1000.0,  # fp32 as in the pipeline
                                       encoder_hidden_states=embeds, pooled_projections=pooled,
                                       return_dict=False)[0].float()

        return self.guided(run, x, sigma, (cond.embeds, cond.pooled), (cond.negative_embeds, cond.negative_pooled))

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = x0 / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


# -- Wan2.1 text-to-video ("WanX") -----------------------------------------------------------------------
@dataclass
class WanConditioning(Conditioning):
    embeds: torch.Tensor  # (N, L, D) UMT5 states
    negative_embeds: torch.Tensor


class WanPolicy(DiffusersPolicy):
    """Wan2.1 text-to-video (1.3B or 14B): UMT5 text encoder, 3D VAE, true CFG with a negative prompt."""

    pipeline_name = "WanPipeline"
    sources = {"path": "the Hub id Wan-AI/Wan2.1-T2V-1.3B-Diffusers (or Wan-AI/Wan2.1-T2V-14B-Diffusers)"}
    env_hint = "WAN_PATH"
    media = "video"

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("diffusers folder of Wan2.1-T2V (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")] = "",
        height: Annotated[int, Range(ge=16), Doc("frame height in pixels (multiple of 16)")] = 480,
        width: Annotated[int, Range(ge=16), Doc("frame width in pixels (multiple of 16)")] = 832,
        frames: Annotated[int, Range(ge=1), Doc("frames, 4k + 1 (the VAE compresses time by 4)")] = 33,
        fps: Annotated[int, Range(ge=1), Doc("frames per second of the video (what video rewards are told)")] = 16,
        guidance_scale: Annotated[float, Range(ge=1), Doc("classifier-free guidance (1 = off)")] = 5.0,
        negative_prompt: Annotated[str, Doc("prompt of the unconditional branch")] = "",
        max_sequence_length: Annotated[int, Range(ge=1, le=512), Doc("UMT5 tokens")] = 226,
        lora_rank: Annotated[int, Range(ge=0), Doc("LoRA rank on the transformer; 0 = full fine-tune")] = 0,
        lora_alpha: Annotated[float, Range(gt=0), Doc("LoRA alpha")] = 16.0,
        lora_targets: Annotated[list[str], Doc("module names that get adapters")] = DEFAULT_LORA_TARGETS,
        gradient_checkpointing: Annotated[bool, Doc("recompute activations in the backward pass")] = False,
        precision: Annotated[Precision, Doc("weights of every component")] = "bf16",
        sigma_grid: SigmaGrid = "pipeline",
        device: Device = "auto",
    ) -> None:
        self.sigma_grid, self.size = sigma_grid, {"height": height, "width": width, "frames": frames}
        self.negative_prompt, self.max_sequence_length, self.fps = negative_prompt, max_sequence_length, fps
        self._load(path, precision=precision, device=device, lora_rank=lora_rank, lora_alpha=lora_alpha,
                   lora_targets=list(lora_targets), gradient_checkpointing=gradient_checkpointing,
                   guidance_scale=guidance_scale)
        ft, fs = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
        if (frames - 1) % ft:
            raise UserError(f"{frames} frames is not {ft}k + 1", where="model.frames", hint=f"use e.g. {(frames // ft) * ft + 1}")
        patch = self.denoiser.config.patch_size
        _multiple(height, fs * patch[1], "model.height")
        _multiple(width, fs * patch[2], "model.width")
        self.latent_shape = (self.denoiser.config.in_channels, (frames - 1) // ft + 1, height // fs, width // fs)

    @classmethod
    def _image_tokens_for(cls, options: dict, vae: dict, transformer: dict) -> int:
        """The transformer's patches of the latent video."""
        _, frames, height, width = cls._noise_grid(options, vae, transformer)
        pt, ph, pw = transformer.get("patch_size", (1, 2, 2))
        return (frames // pt) * (height // ph) * (width // pw)

    @classmethod
    def _noise_grid(cls, options: dict, vae: dict, transformer: dict) -> tuple[int, ...]:
        down = vae["temperal_downsample"]
        ft, fs = 2 ** sum(down), 2 ** len(down)
        return (transformer["in_channels"], (options["frames"] - 1) // ft + 1, options["height"] // fs,
                options["width"] // fs)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> WanConditioning:
        n = len(prompts)
        pe, npe = self.pipe.encode_prompt(prompt=list(prompts), negative_prompt=[self.negative_prompt] * n,
                                          do_classifier_free_guidance=True, max_sequence_length=self.max_sequence_length,
                                          device=self.device)
        return WanConditioning(pe.to(self.dtype), npe.to(self.dtype))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: WanConditioning) -> torch.Tensor:
        def run(x, sigma, embeds):
            return self._active()(hidden_states=x.to(self.dtype), timestep=sigma.float() * 1000.0,  # fp32 as in the pipeline
                                       encoder_hidden_states=embeds, return_dict=False)[0].float()

        return self.guided(run, x, sigma, cond.embeds, cond.negative_embeds)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Videos (N, F, 3, H, W) in [0, 1]."""
        vae = self.pipe.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean, device=x0.device).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=x0.device).view(1, z, 1, 1, 1)
        latents = x0 * std + mean
        video = vae.decode(latents.to(vae.dtype), return_dict=False)[0]  # (N, 3, F, H, W) in [-1, 1]
        return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).cpu()
