"""CLIP-family rewards, written natively on torch + transformers' `CLIPModel`: HPS-v2.1, PickScore,
CLIP score and the LAION aesthetic predictor (docs/rewards.md of the project spec, sections 1-5).

Images arrive as float (N, 3, H, W) in [0, 1]. Each reward reproduces its reference preprocessing:
HPS-v2.1 resizes the float tensor so that its longer side is 224 (bicubic, antialiased) and pads
with black; PickScore, the aesthetic predictor and DanceGRPO's CLIP score go through uint8 PIL
images as their processors do; Flow-GRPO's CLIP score resizes the float tensor bilinearly. Every
image is preprocessed on its own, so a score never depends on the rest of the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from grpo.core import hub
from grpo.core.errors import UserError
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range

from .common import placement, require_path

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16", "fp16"]


# -- preprocessing -------------------------------------------------------------------------------------
def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_max_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's ResizeMaxSize: the longer side to `size` (bicubic with antialias on the float
    tensor), then zero padding centred to size × size. Not clamped."""
    out = []
    for img in images.float():
        h, w = img.shape[-2:]
        scale = size / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        img = F.interpolate(img[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
        ph, pw = size - nh, size - nw
        out.append(F.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0))
    return torch.stack(out)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 PIL images, as the reference pipelines hand their rewards."""
    arr = (images.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def pil_short_side_crop(images: torch.Tensor, size: int, *, round_crop: bool = False) -> torch.Tensor:
    """Shortest side to `size` (PIL bicubic, the long side truncated as both transformers' processor
    and torchvision compute it), centre crop size², rescale 1/255. The crop offset is floored
    (CLIPProcessor) or rounded (`round_crop`: torchvision's CenterCrop)."""
    out = []
    for im in to_pil(images):
        w, h = im.size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), Image.BICUBIC)
        if round_crop:
            left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        else:
            left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def pil_squash(images: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's "squash": resize straight to size × size (PIL bicubic), no crop."""
    out = [torch.from_numpy(np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0)
           .permute(2, 0, 1) for im in to_pil(images)]
    return torch.stack(out)


def tensor_short_side_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision Resize(size) on a float tensor (bilinear, antialias) then CenterCrop(size)."""
    out = []
    for img in images.float():
        h, w = img.shape[-2:]
        if h <= w:
            nh, nw = size, int(size * w / h)
        else:
            nh, nw = int(size * h / w), size
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        out.append(img[:, top : top + size, left : left + size])
    return torch.stack(out)


# -- weights ---------------------------------------------------------------------------------------------
def open_clip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict (ViT vision tower, transformer text tower) in the key layout of
    transformers' `CLIPModel`: fused in_proj split into q/k/v, projections transposed."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        tower, rest = ("vision_model.", key[len("visual."):]) if key.startswith("visual.") else ("text_model.", key)
        if rest.startswith("transformer.resblocks."):
            i, _, sub = rest[len("transformer.resblocks."):].partition(".")
            base = f"{tower}encoder.layers.{i}."
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = sub.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}.{kind}"] = part.clone()
                continue
            sub = (sub.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                   .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
            out[base + sub] = value
            continue
        simple = {
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "logit_scale": "logit_scale",
        }
        if key in simple:
            out[simple[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        elif key.startswith(("visual.ln_pre.", "visual.ln_post.", "ln_final.")):
            layer, _, param = key.rpartition(".")
            name = {"visual.ln_pre": "vision_model.pre_layrnorm", "visual.ln_post": "vision_model.post_layernorm",
                    "ln_final": "text_model.final_layer_norm"}[layer]
            out[f"{name}.{param}"] = value
        elif key == "attn_mask":
            continue  # the causal mask open_clip keeps as a buffer
        else:
            raise ValueError(f"unexpected open_clip key {key!r}")
    return out


def hf_config_from_open_clip(state: dict[str, torch.Tensor], vision_heads: int, text_heads: int,
                             eos_token_id: int, act: str = "gelu"):
    """A `CLIPConfig` whose shapes are read off an open_clip state dict (the head counts are given)."""
    from transformers import CLIPConfig

    def layers(prefix: str) -> int:
        return 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))

    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    text_width = state["token_embedding.weight"].shape[1]
    vision = dict(hidden_size=width, intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  num_hidden_layers=layers("visual.transformer.resblocks."), num_attention_heads=vision_heads,
                  image_size=grid * patch, patch_size=patch, hidden_act=act, layer_norm_eps=1e-5)
    text = dict(vocab_size=state["token_embedding.weight"].shape[0], hidden_size=text_width,
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=layers("transformer.resblocks."), num_attention_heads=text_heads,
                max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=act,
                layer_norm_eps=1e-5, eos_token_id=eos_token_id, bos_token_id=eos_token_id - 1,
                pad_token_id=eos_token_id)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["visual.proj"].shape[1])


def _tokenizer(path: Path, where: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"no CLIP tokenizer in {str(path)!r} ({str(e).splitlines()[0]})", where=where,
                        hint="point it at a folder with the CLIP tokenizer files, e.g. "
                             "laion/CLIP-ViT-H-14-laion2B-s32B-b79K") from None


class _ClipReward:
    """Shared by the CLIP-family rewards: a `CLIPModel`, a tokenizer, cosine similarities."""

    requires = ("transformers",)

    media = "image"
    max_length = 77
    pad_to_max = True

    def _setup(self, model, tokenizer, device: str, precision: str) -> None:
        self.device, self.dtype = placement(device, precision)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def features(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised projected image and text embeddings, fp32."""
        pixels = normalize(self.preprocess(images)).to(self.device, self.dtype)
        tokens = self.tokenizer(list(prompts), padding="max_length" if self.pad_to_max else True, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        img = self.model.get_image_features(pixel_values=pixels)
        txt = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        img = getattr(img, "pooler_output", img).float()
        txt = getattr(txt, "pooler_output", txt).float()
        return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img, txt = self.features(images, prompts)
        return (img * txt).sum(dim=-1).cpu()


class HPSv2Reward(_ClipReward):
    """HPS-v2.1: human preference score, the cosine of an open_clip ViT-H-14 fine-tuned on HPDv2."""

    sources = {"path": "the Hub id xswu/HPSv2:HPS_v2.1_compressed.pt, or a local copy of that file",
               "tokenizer": "the Hub id laion/CLIP-ViT-H-14-laion2B-s32B-b79K (its tokenizer files only)"}
    hub_patterns = {"path": hub.MODEL, "tokenizer": hub.TOKENIZER}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("HPS_v2.1_compressed.pt (open_clip layout) or a converted CLIPModel folder")] = "",
        tokenizer: Annotated[str, Doc("folder of the CLIP tokenizer (e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")] = "",
        vision_heads: Annotated[int, Range(ge=1), Doc("attention heads of the vision tower (ViT-H-14: 16)")] = 16,
        text_heads: Annotated[int, Range(ge=1), Doc("attention heads of the text tower (ViT-H-14: 16)")] = 16,
        precision: Annotated[Precision, Doc("weights (the reference runs fp16 autocast)")] = "fp32",
        device: Device = "auto",
    ) -> None:
        from transformers import CLIPModel

        weights = require_path(path, "reward.path", "HPS_PATH", "HPS-v2.1 weights", self.hub_patterns["path"])
        tok = _tokenizer(require_path(tokenizer or (path if weights.is_dir() else ""), "reward.tokenizer",
                                   "CLIP_TOKENIZER_PATH", "CLIP tokenizer folder", self.hub_patterns["tokenizer"]), "reward.tokenizer")
        if weights.is_dir():
            model = CLIPModel.from_pretrained(str(weights))
        else:
            ckpt = torch.load(str(weights), map_location="cpu", weights_only=True)
            state = ckpt.get("state_dict", ckpt)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            config = hf_config_from_open_clip(state, vision_heads, text_heads, tok.eos_token_id)
            model = CLIPModel(config)
            converted = open_clip_to_hf(state)
            missing, unexpected = model.load_state_dict(converted, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise UserError(f"{weights} is not an open_clip CLIP checkpoint (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})", where="reward.path")
        self.size = model.config.vision_config.image_size
        self._setup(model, tok, device, precision)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return resize_max_pad(images, self.size)

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return RewardOutput(self.cosine(images, prompts))


PickScaling = Literal["raw", "logit", "flow-grpo", "mixgrpo"]


class PickScoreReward(_ClipReward):
    """PickScore v1: CLIP ViT-H-14 fine-tuned on Pick-a-Pic. `scaling` picks the repos' variants:
    raw cosine (DanceGRPO and BranchGRPO, the default), logit (the official README, ≈100·cos),
    flow-grpo (100·cos/26) or mixgrpo ((100·cos − 18)/8)."""

    pad_to_max = False
    sources = {"path": "the Hub id yuvalkirstain/PickScore_v1, or a local copy of it",
               "processor": "the Hub id laion/CLIP-ViT-H-14-laion2B-s32B-b79K (its tokenizer files only)"}
    hub_patterns = {"path": hub.MODEL, "processor": hub.TOKENIZER}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("CLIPModel folder of yuvalkirstain/PickScore_v1")] = "",
        processor: Annotated[str, Doc("tokenizer folder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K); default path")] = "",
        scaling: Annotated[PickScaling, Doc("raw cos (BranchGRPO) | logit | flow-grpo | mixgrpo")] = "raw",
        precision: Annotated[Precision, Doc("weights")] = "fp32",
        device: Device = "auto",
    ) -> None:
        from transformers import CLIPModel

        folder = require_path(path, "reward.path", "PICKSCORE_PATH", "PickScore folder", self.hub_patterns["path"])
        tok = _tokenizer(require_path(processor or str(folder), "reward.processor", "CLIP_TOKENIZER_PATH",
                                   "processor folder", self.hub_patterns["processor"]), "reward.processor")
        model = CLIPModel.from_pretrained(str(folder))
        self.scaling, self.size = scaling, model.config.vision_config.image_size
        self._setup(model, tok, device, precision)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return pil_short_side_crop(images, self.size)

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        cos = self.cosine(images, prompts)
        if self.scaling == "logit":
            scores = float(self.model.logit_scale.exp()) * cos
        elif self.scaling == "flow-grpo":
            scores = 100.0 * cos / 26.0
        elif self.scaling == "mixgrpo":
            scores = (100.0 * cos - 18.0) / 8.0
        else:
            scores = cos
        return RewardOutput(scores.float(), {"cosine": cos.float()})


class ClipScoreReward(_ClipReward):
    """CLIP score in two reference definitions: flow-grpo (openai/clip-vit-large-patch14, bilinear
    resize and crop of the float image, logit_scale·cos/30) or dancegrpo (DFN5B-CLIP-ViT-H-14-378
    loaded as a CLIPModel with quick_gelu, squashed to the input size, raw cosine; the paper weights
    it 1.4 against HPS's 0.7)."""

    sources = {"path": "the Hub id openai/clip-vit-large-patch14 (dancegrpo: apple/DFN5B-CLIP-ViT-H-14-378)"}
    hub_patterns = {"path": hub.MODEL}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("CLIPModel folder (openai/clip-vit-large-patch14 or apple/DFN5B-CLIP-ViT-H-14-378)")] = "",
        variant: Annotated[Literal["flow-grpo", "dancegrpo"], Doc("which reference definition")] = "flow-grpo",
        precision: Annotated[Precision, Doc("weights")] = "fp32",
        device: Device = "auto",
    ) -> None:
        from transformers import CLIPModel

        folder = require_path(path, "reward.path", "CLIP_PATH", "CLIP folder", self.hub_patterns["path"])
        tok = _tokenizer(folder, "reward.path")
        model = CLIPModel.from_pretrained(str(folder))
        self.variant, self.size = variant, model.config.vision_config.image_size
        self.pad_to_max = variant == "flow-grpo"
        self._setup(model, tok, device, precision)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if self.variant == "flow-grpo":
            return tensor_short_side_crop(images, self.size)
        return pil_squash(images, self.size)

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        cos = self.cosine(images, prompts)
        if self.variant == "flow-grpo":
            scores = float(self.model.logit_scale.exp()) * cos / 30.0
        else:
            scores = cos
        return RewardOutput(scores.float(), {"cosine": cos.float()})


class AestheticReward(_ClipReward):
    """LAION aesthetic predictor v2: an affine MLP head (no activations) on the normalised CLIP
    ViT-L/14 image embedding; about 1-10. The prompt is not used."""

    sources = {"path": "the Hub id openai/clip-vit-large-patch14",
               "head": "sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/improved-aesthetic-predictor"}
    hub_patterns = {"path": hub.MODEL, "head": ()}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("CLIPModel folder of openai/clip-vit-large-patch14")] = "",
        head: Annotated[str, Doc("sac+logos+ava1-l14-linearMSE.pth")] = "",
        precision: Annotated[Precision, Doc("weights")] = "fp32",
        device: Device = "auto",
    ) -> None:
        from transformers import CLIPModel

        folder = require_path(path, "reward.path", "CLIP_L14_PATH", "CLIP folder", self.hub_patterns["path"])
        head_file = require_path(head, "reward.head", "AESTHETIC_HEAD_PATH", "aesthetic head",
                                 self.hub_patterns["head"])
        state = torch.load(str(head_file), map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        names = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda n: int(n.split(".")[1]))
        if not names or any(not n.startswith("layers.") for n in names):
            raise UserError(f"{head_file} is not the aesthetic head (keys layers.N.weight/bias)", where="reward.head")
        self.head = [(state[f"{n}.weight"].float(), state[f"{n}.bias"].float()) for n in names]
        model = CLIPModel.from_pretrained(str(folder))
        self.size = model.config.vision_config.image_size
        self._setup(model, _tokenizer(folder, "reward.path"), device, precision)
        self.head = [(w.to(self.device), b.to(self.device)) for w, b in self.head]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return pil_short_side_crop(images, self.size)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        pixels = normalize(self.preprocess(images)).to(self.device, self.dtype)
        emb = self.model.get_image_features(pixel_values=pixels)
        x = F.normalize(getattr(emb, "pooler_output", emb).float(), dim=-1)
        for w, b in self.head:  # Linear layers with dropout (off) between them and no activation
            x = x @ w.t() + b
        return RewardOutput(x[:, 0].cpu().float())
