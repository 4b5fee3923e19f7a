"""What the diffusers-backed policies (FLUX.1, SD3.5, Wan2.1) share: loading a pipeline folder by
path or Hub id, freezing everything but the transformer, LoRA through peft, the KL reference, export.

Each model converts between the engine's convention and its own: the state ``x`` is the latent as
the transformer sees it (FLUX: packed 2×2 patches), σ ∈ [0, 1] is the flow-matching noise level
(x = (1 − σ)·x0 + σ·ε) and the velocity is v = ε − x0, which is what these transformers predict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch

from grpo.core import hub
from grpo.core.errors import UserError
from grpo.core.schema import Doc

from ..policies import FrozenReference, merged_copy
from .grids import model_schedule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SigmaGrid = Annotated[Literal["pipeline", "shifted", "flow-sigmas"], Doc(
    "the σ grid of rollout and evaluation: pipeline = the one this model's diffusers pipeline samples on by default, "
    "from its scheduler's config (the scheduler's shift; sampler.shift must be left out or agree); shifted = the "
    "sampler's own, u = 1 − k/T under sampler.shift (DanceGRPO, BranchGRPO and MixGRPO sample on it); flow-sigmas = "
    "diffusers' DPM-Solver++ grid with flow sigmas, u = (1 − 1/1000)·(1 − k/T) under sampler.shift (DGPO's)")]

# Linear layers of the attention and feed-forward blocks of FLUX, SD3 and Wan transformers.
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                        "ff.net.0.proj", "ff.net.2"]


def check_folder(path: str, env_hint: str, files: tuple[str, ...] = ("model_index.json",), *,
                 download: bool = True) -> Path:
    """The pipeline folder `path` names (a local folder, or a Hub id resolved through the Hugging
    Face cache), or a UserError naming `model.path`, the variable to set and the fetch command."""
    if not path:
        raise UserError("no model folder given", where="model.path",
                        hint=f"set model.path to a diffusers folder or a Hub id (owner/name), e.g. "
                             f"model.path = \"${{{env_hint}}}\" and export {env_hint}=/path/to/model")
    ref = hub.hub_ref(path)
    if ref is not None:
        if ref.file:
            raise UserError(f"model.path {path!r} names one file of a repository", where="model.path",
                            hint="name the repository of the diffusers pipeline (owner/name), without ':file'")
        folder = hub.resolve(path, where="model.path", what="model", patterns=hub.PIPELINE, download=download,
                             env=env_hint)
    else:
        folder = Path(os.path.expanduser(path))
        if not folder.is_dir():
            raise UserError(f"model folder {str(folder)!r} does not exist", where="model.path",
                            hint=f"download the weights there, point {env_hint} (or model.path) at them, or name a "
                                 "Hub id (owner/name)")
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise UserError(f"model folder {str(folder)!r} lacks {', '.join(missing)}", where="model.path",
                        hint="it must be a diffusers pipeline folder (save_pretrained or a hub snapshot)")
    return folder


def folder_config(path: str, component: str, file: str = "config.json") -> dict | None:
    """``PATH/component/config.json`` (or `file`) of a pipeline folder (or of a Hub id's cached snapshot), or
    None where it cannot be read yet (a ``${VAR}`` not expanded, a folder not there, an id not in
    the cache): configs only, never weights, never a download."""
    if "${" in path or not path:
        return None
    ref = hub.hub_ref(path)
    if ref is not None:
        snapshot = hub.cached(hub.HubRef(ref.repo, ref.revision))
        if snapshot is None:
            return None
        path = str(snapshot)
    found = Path(path) / component / file
    if not found.is_file():
        return None
    try:
        return json.loads(found.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class DiffusersPolicy(FrozenReference):
    """Base of the diffusers policies; subclasses set `pipeline_class` and the model-specific parts."""

    pipeline_name = ""  # the diffusers pipeline class that loads the folder
    env_hint = "MODEL_PATH"
    hub_patterns = {"path": hub.PIPELINE}
    requires = ("diffusers", "transformers")
    media = "image"

    @classmethod
    def noise_grid_for(cls, options: dict) -> tuple[int, ...] | None:
        """The latent grid the exploration noise tiles, from the folder's VAE and transformer configs
        (no weights are read); None when the configs cannot be read yet."""
        vae, transformer = folder_config(options.get("path", ""), "vae"), folder_config(options.get("path", ""),
                                                                                        "transformer")
        if vae is None or transformer is None:
            return None
        return cls._noise_grid(options, vae, transformer)

    @classmethod
    def _noise_grid(cls, options: dict, vae: dict, transformer: dict) -> tuple[int, ...] | None:
        return None

    @classmethod
    def sigma_schedule_for(cls, options: dict) -> tuple[Callable[[int], Sequence[float]], float | None] | None:
        """``sigma_schedule()`` from the folder's scheduler, VAE and transformer configs (no weights);
        None for the sampler's own grid, or when the configs cannot be read yet."""
        path = options.get("path", "")
        scheduler = folder_config(path, "scheduler", "scheduler_config.json")
        vae, transformer = folder_config(path, "vae"), folder_config(path, "transformer")
        if scheduler is None or vae is None or transformer is None:
            return None
        return model_schedule(options.get("sigma_grid", "pipeline"), cls.pipeline_name, scheduler.get("_class_name", ""),
                              scheduler, cls._image_tokens_for(options, vae, transformer))

    @classmethod
    def _image_tokens_for(cls, options: dict, vae: dict, transformer: dict) -> int:
        """The transformer's tokens of one latent, from the size options (height, width, frames) and the
        VAE's and transformer's configs."""
        raise NotImplementedError

    def _load(self, path: str, *, precision: str, device: str, lora_rank: int, lora_alpha: float,
              lora_targets: list[str], gradient_checkpointing: bool, guidance_scale: float) -> None:
        folder = check_folder(path, self.env_hint)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = DTYPES[precision]
        self.guidance_scale = guidance_scale
        import diffusers

        pipe = getattr(diffusers, self.pipeline_name).from_pretrained(str(folder), dtype=self.dtype)
        pipe.set_progress_bar_config(disable=True)
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.to(self.device).requires_grad_(False).eval()
        self.pipe = pipe
        self.denoiser = pipe.transformer
        self.lora_rank = lora_rank
        if lora_rank > 0:
            from peft import LoraConfig

            present = {n.rsplit(".", 1)[-1] for n, _ in self.denoiser.named_modules()} | {
                n for n, _ in self.denoiser.named_modules()}
            targets = [t for t in lora_targets if any(m == t or m.endswith("." + t) for m in present)]
            if not targets:
                raise UserError(f"none of {lora_targets} is a module of {type(self.denoiser).__name__}",
                                where="model.lora_targets", hint="name Linear layers, e.g. 'to_q', 'to_k'")
            self.denoiser.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                                                 target_modules=targets))
            for n, p in self.denoiser.named_parameters():  # adapters train in fp32 under a bf16 base
                if "lora_" in n:
                    p.data = p.data.float()
        else:
            self.denoiser.requires_grad_(True)
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()

    def sigma_schedule(self) -> tuple[Callable[[int], Sequence[float]], float | None] | None:
        """The σ grid this model samples on (``model.sigma_grid``): the times of a T-step grid and its
        shift (None: the sampler's), or None for the sampler's own grid. The token count comes from
        the loaded configs by the same rule as `sigma_schedule_for`'s."""
        scheduler = self.pipe.scheduler
        tokens = self._image_tokens_for(self.size, dict(self.pipe.vae.config), dict(self.denoiser.config))
        return model_schedule(self.sigma_grid, self.pipeline_name, type(scheduler).__name__, dict(scheduler.config),
                              tokens)

    # -- training surface -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def guided(self, run, x: torch.Tensor, sigma: torch.Tensor, cond, negative) -> torch.Tensor:
        """True classifier-free guidance: `run(x, σ, embeddings)` on the prompt and on `negative`."""
        if self.guidance_scale == 1.0 or negative is None:
            return run(x, sigma, cond)
        v_c = run(x, sigma, cond)
        v_u = run(x, sigma, negative)
        return v_u + self.guidance_scale * (v_c - v_u)

    def export(self, directory: Path) -> None:
        """The whole pipeline folder (diffusers' layout), LoRA merged; adapters also in ``lora/``."""
        self.pipe.save_pretrained(str(directory))
        if self.lora_rank > 0:
            merged_copy(self.denoiser, self.lora_rank, directory).save_pretrained(str(Path(directory) / "transformer"))
