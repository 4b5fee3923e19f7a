"""HPSv3: human preference score v3, a Qwen2-VL-7B whose last hidden state at a `<|Reward|>` token
goes through a small "ranknet" head that outputs (μ, σ); the score is μ (the score spec's §8).

The released `HPSv3.safetensors` is a full state dict (no LoRA) in transformers 5's key layout;
the older layout is accepted too. Images are resized to exactly 256 patches of 28² (the reference
sets the minimum and maximum pixel counts equal) and run with plain 1-D positions, as VideoAlign.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from grpo.core import hub
from grpo.core.errors import UserError
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range

from .common import require_path
from .videoalign import QwenVLReward, patchify, qwen2vl_key

REWARD_TOKEN = "<|Reward|>"


def split_hpsv3(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """(the Qwen2-VL state in transformers 5's layout, the head's Linear layers in order)."""
    head: dict[int, dict[str, torch.Tensor]] = {}
    model = {}
    for key, value in state.items():
        if key.startswith("rm_head."):
            index, _, param = key[len("rm_head."):].partition(".")
            head.setdefault(int(index), {})[param] = value
            continue
        model[qwen2vl_key(key)] = value
    if not head:
        raise ValueError("no rm_head.* keys: not an HPSv3 checkpoint")
    return model, [(head[i]["weight"].float(), head[i]["bias"].float()) for i in sorted(head)]


class HPSv3Reward(QwenVLReward):
    """HPSv3 (MizzenAI): the preference model's μ for an image and its prompt (roughly 0-15)."""

    media = "image"
    sources = {
        "path": "the Hub id MizzenAI/HPSv3:HPSv3.safetensors, or a local copy of that file",
        "base": "the Hub id Qwen/Qwen2-VL-7B-Instruct (its config and tokenizer only)",
        "template_file": "HPSv3's instruction (github.com/MizzenAI/HPSv3) with {text_prompt} where the prompt goes "
                         "and <|Reward|> where the score is read, saved byte for byte as a text file",
    }
    hub_patterns = {"path": (), "base": hub.CONFIG_AND_TOKENIZER}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("HPSv3.safetensors")] = "",
        base: Annotated[str, Doc("Qwen2-VL-7B-Instruct folder (config and tokenizer)")] = "",
        template_file: Annotated[str, Doc("text file of the prompt, with {text_prompt} and <|Reward|>")] = "",
        pixels: Annotated[int, Range(ge=784), Doc("image area after resizing (minimum = maximum)")] = 256 * 28 * 28,
        scale: Annotated[float, Range(gt=0), Doc("score = μ / scale (UniRL divides by 15)")] = 1.0,
        precision: Annotated[Literal["fp32", "bf16", "fp16"], Doc("weights of the Qwen2-VL (the head is fp32)")] = "bf16",
        device: Literal["auto", "cpu", "cuda"] = "auto",
    ) -> None:
        from safetensors.torch import load_file

        weights = require_path(path, "reward.path", "HPSV3_PATH", "HPSv3 weights", self.hub_patterns["path"])
        base_dir = require_path(base, "reward.base", "QWEN2VL_7B_PATH", "Qwen2-VL-7B folder", self.hub_patterns["base"])
        template = require_path(template_file, "reward.template_file", "HPSV3_TEMPLATE", "prompt template")
        self.template = self._template(template, (REWARD_TOKEN,), "HPSv3's instruction with <|Reward|>")
        try:
            state, self.head = split_hpsv3(load_file(str(weights)))
        except ValueError as e:
            raise UserError(f"{weights}: {e}", where="reward.path", hint="use HPSv3.safetensors as released") from None
        self._setup_model(base_dir, None, (REWARD_TOKEN,), state, weights, device, precision,
                          "use HPSv3.safetensors with the Qwen2-VL-7B-Instruct config")
        self.head = [(w.to(self.device), b.to(self.device)) for w, b in self.head]
        self.pixels, self.scale = pixels, scale

    def prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An image (3, H, W) in [0, 1] → (patches, grid_thw): a fixed area, the frame repeated in time."""
        frames = self.resized((image[None].float().clamp(0, 1) * 255).round(), self.pixels, self.pixels)
        return patchify(frames, self.patch, self.temporal, self.merge)

    @torch.no_grad()
    def mu_sigma(self, image: torch.Tensor, prompt: str) -> torch.Tensor:
        patches, grid = self.prepare(image)
        ids = self.prompt_ids(prompt, "<|image_pad|>", int(grid.prod()) // (self.merge**2))
        x = self.at_token(self.hidden_states(patches, grid, ids, self.config.image_token_id), ids, self.special_ids[0])
        for i, (w, b) in enumerate(self.head):  # Linear, ReLU, (Dropout), Linear, ReLU, Linear
            x = x @ w.t() + b
            if i < len(self.head) - 1:
                x = torch.relu(x)
        return x.cpu()

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        out = torch.stack([self.mu_sigma(im, p) for im, p in zip(images, prompts, strict=True)])
        return RewardOutput((out[:, 0] / self.scale).float(), {"sigma": out[:, 1].float()})
