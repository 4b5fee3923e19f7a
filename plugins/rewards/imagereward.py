"""ImageReward: BLIP's ViT-L/16 image encoder and its "med" BERT text encoder with cross-attention
to the image, and an affine head on the text's first token; written natively on transformers 5's
`BlipVisionModel` and `BlipTextModel` from the released `ImageReward.pt` (its key layout mapped).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import torch

from grpo.core import hub
from grpo.core.errors import UserError
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc

from .clip import normalize, pil_short_side_crop
from .common import placement, require_path

# ImageReward's published normalisation of the head's output.
MEAN, STD = 0.16717362830052426, 1.0333394966054072


def blip_vision_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`blip.visual_encoder.*` (BLIP's ViT, timm layout) → `BlipVisionModel` keys."""
    out = {}
    for key, value in state.items():
        if key == "cls_token":
            out["embeddings.class_embedding"] = value
        elif key == "pos_embed":
            out["embeddings.position_embedding"] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embedding." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out["post_layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("blocks."):
            i, _, rest = key[len("blocks."):].partition(".")
            rest = (rest.replace("norm1", "layer_norm1").replace("norm2", "layer_norm2")
                    .replace("attn.qkv", "self_attn.qkv").replace("attn.proj", "self_attn.projection"))
            out[f"encoder.layers.{i}.{rest}"] = value
        else:
            raise ValueError(f"unexpected BLIP vision key {key!r}")
    return out


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[tuple[torch.Tensor, torch.Tensor]]]:
    """ImageReward.pt → (vision state, text state, head layers [(weight, bias)] in order)."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            vision[key[len("blip.visual_encoder."):]] = value
        elif key.startswith("blip.text_encoder."):
            sub = key[len("blip.text_encoder."):]
            if not sub.endswith("position_ids"):
                text[sub] = value
        elif key.startswith("mlp.layers."):
            i, _, param = key[len("mlp.layers."):].partition(".")
            head.setdefault(int(i), {})[param] = value
        elif key.startswith(("blip.vision_proj", "blip.text_proj")):
            continue  # unused by the score
        else:
            raise ValueError(f"unexpected ImageReward key {key!r}")
    layers = [(head[i]["weight"].float(), head[i]["bias"].float()) for i in sorted(head)]
    return blip_vision_to_hf(vision), text, layers


class ImageRewardReward:
    """ImageReward (THUDM / zai-org): human preference for text-to-image outputs, ≈ N(0, 1) over its
    training pairs."""

    media = "image"
    max_length = 35
    requires = ("transformers",)
    sources = {
        "path": "the Hub id zai-org/ImageReward:ImageReward.pt (med_config.json beside it is fetched too), or a "
                "local copy of the two files",
        "tokenizer": "the Hub id google-bert/bert-base-uncased (its tokenizer files; [DEC] and [ENC] are added here)",
    }
    hub_patterns = {"path": (), "tokenizer": hub.TOKENIZER}
    hub_companions = {"path": ("med_config.json",)}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("ImageReward.pt (med_config.json beside it is read when present)")] = "",
        tokenizer: Annotated[str, Doc("bert-base-uncased tokenizer folder")] = "",
        vision_heads: Annotated[int, Doc("attention heads of the ViT (ViT-L/16: 16)")] = 16,
        text_heads: Annotated[int, Doc("attention heads of the med BERT (12)")] = 12,
        precision: Annotated[Literal["fp32", "bf16", "fp16"], Doc("weights")] = "fp32",
        device: Literal["auto", "cpu", "cuda"] = "auto",
    ) -> None:
        from transformers import (
            AutoTokenizer,
            BlipTextConfig,
            BlipTextModel,
            BlipVisionConfig,
            BlipVisionModel,
        )

        weights = require_path(path, "reward.path", "IMAGEREWARD_PATH", "ImageReward weights", self.hub_patterns["path"],
                               companions=self.hub_companions["path"])
        tok = AutoTokenizer.from_pretrained(str(require_path(tokenizer, "reward.tokenizer", "BERT_TOKENIZER_PATH",
                                                      "tokenizer folder", self.hub_patterns["tokenizer"])))
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        self.tokenizer = tok
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        vision_state, text_state, self.head = split_checkpoint(state)
        med = json.loads((weights.parent / "med_config.json").read_text()) if (
            weights.parent / "med_config.json").is_file() else {}
        patch = vision_state["embeddings.patch_embedding.weight"]
        grid = vision_state["embeddings.position_embedding"].shape[1] - 1
        vision_cfg = BlipVisionConfig(
            hidden_size=patch.shape[0], patch_size=patch.shape[-1], image_size=int(round(grid**0.5)) * patch.shape[-1],
            intermediate_size=vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=1 + max(int(k.split(".")[2]) for k in vision_state if k.startswith("encoder.layers.")),
            num_attention_heads=vision_heads, layer_norm_eps=1e-6, hidden_act="gelu")
        words = text_state["embeddings.word_embeddings.weight"]
        text_cfg = BlipTextConfig(
            vocab_size=words.shape[0], hidden_size=words.shape[1], encoder_hidden_size=patch.shape[0],
            intermediate_size=text_state["encoder.layer.0.intermediate.dense.weight"].shape[0],
            num_hidden_layers=1 + max(int(k.split(".")[2]) for k in text_state if k.startswith("encoder.layer.")),
            num_attention_heads=med.get("num_attention_heads", text_heads),
            max_position_embeddings=text_state["embeddings.position_embeddings.weight"].shape[0],
            layer_norm_eps=med.get("layer_norm_eps", 1e-12), is_decoder=True, pad_token_id=0)
        self.vision, self.text = BlipVisionModel(vision_cfg), BlipTextModel(text_cfg, add_pooling_layer=False)
        for model, sd, what in ((self.vision, vision_state, "vision"), (self.text, text_state, "text")):
            missing, unexpected = model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:  # the reference loads non-strictly; we insist on full coverage
                raise UserError(f"{weights}: the {what} weights do not fit (missing {missing[:3]}, unexpected "
                                f"{unexpected[:3]})", where="reward.path", hint="use ImageReward.pt as released")
        self.device, self.dtype = placement(device, precision)
        for m in (self.vision, self.text):
            m.to(self.device, self.dtype).eval().requires_grad_(False)
        self.head = [(w.to(self.device), b.to(self.device)) for w, b in self.head]
        self.size = vision_cfg.image_size

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        # PIL bicubic on the short side, then torchvision's centre crop (offsets rounded)
        pixels = normalize(pil_short_side_crop(images, self.size, round_crop=True)).to(self.device, self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        out = self.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                        encoder_hidden_states=image_embeds,
                        encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device),
                        is_decoder=False)
        x = out.last_hidden_state[:, 0].float()
        for w, b in self.head:  # Linear layers with dropout (off) and no activation between them
            x = x @ w.t() + b
        raw = x[:, 0]
        return RewardOutput(((raw - MEAN) / STD).cpu().float(), {"raw": raw.cpu().float()})
