"""VideoAlign (VideoReward): a Qwen2-VL-2B reward model that rates a video's visual quality (VQ),
motion quality (MQ) and text alignment (TA), written natively on transformers 5.

The released checkpoint is a PEFT-wrapped state dict in transformers 4.46's key layout: LoRA
adapters (r 64, α 128) on every Linear of the language model, plus a linear `rm_head` that reads
the last hidden state at three special tokens. Here the adapters are merged into the weights
(W += α/r · B·A), the keys are moved to transformers 5's layout, and the forward reproduces the
reference's: video embeddings scattered into the `<|video_pad|>` slots, and plain 1-D positions
in all three M-RoPE sections (the reference calls the language model without position ids).

Frames are sampled at 2 per second of the video at its real fps (`fps`, by default the model's),
resized to multiples of 28 within 448² pixels (bicubic on uint8 frames, re-quantised), and cut
into 2×14×14 patches as Qwen2-VL's processor does, without torchvision.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from grpo.core import hub
from grpo.core.errors import UserError
from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range

from .clip import CLIP_MEAN, CLIP_STD
from .common import placement, require_path

SPECIAL = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
# Mean and standard deviation of each raw dimension (DanceGRPO's and VideoAlign's normalisation).
NORMS = {"VQ": (3.6757, 2.2476), "MQ": (1.1646, 1.3811), "TA": (2.8105, 2.5121)}
SYSTEM = "You are a helpful assistant."
LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# -- frames -----------------------------------------------------------------------------------------
def frame_indices(total: int, src_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768) -> torch.Tensor:
    """Which of `total` frames recorded at `src_fps` are seen: `fps` per second, an even number
    between `min_frames` and min(`max_frames`, total), uniformly spaced."""
    n = total / src_fps * fps
    top = max(2, (min(max_frames, total) // 2) * 2)
    n = min(max(n, min_frames), top)
    n = max(2, int(round(n / 2)) * 2)
    n = min(n, total)
    return torch.linspace(0, total - 1, n).round().long()


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 128 * 28 * 28,
                 max_pixels: int = 448 * 448) -> tuple[int, int]:
    """Both sides multiples of `factor`, the area within [min_pixels, max_pixels], the aspect kept."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def patchify(frames: torch.Tensor, patch: int = 14, temporal: int = 2, merge: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (T, 3, H, W) in 0-255 → (patches (t·h·w, 3·temporal·patch²), grid [t, h, w]), as
    Qwen2-VL's processor: rescale, CLIP-normalise, pad T to a multiple of `temporal` with the last
    frame, and order patches so that each merge×merge block is contiguous."""
    x = frames.float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    if x.shape[0] % temporal:
        x = torch.cat([x, x[-1:].expand(temporal - x.shape[0] % temporal, -1, -1, -1)])
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = x.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), torch.tensor([gt, gh, gw])


# -- weights ----------------------------------------------------------------------------------------
def convert_checkpoint(state: dict[str, torch.Tensor], scale: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The released PEFT-wrapped, transformers-4.46 state dict → (a transformers-5
    `Qwen2VLForConditionalGeneration` state dict with the LoRA merged, the rm_head weight)."""
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." in key:
            stem, _, param = key.partition(".base_layer.")
            if param == "weight":
                a, b = state.get(f"{stem}.lora_A.default.weight"), state.get(f"{stem}.lora_B.default.weight")
                if a is not None and b is not None:
                    value = (value.float() + scale * (b.float() @ a.float())).to(value.dtype)
            key = f"{stem}.{param}"
        merged[key] = value
    rm_head = merged.pop("rm_head.weight", None)
    if rm_head is None:
        raise ValueError("no rm_head.weight: not a VideoReward checkpoint")
    return {qwen2vl_key(k): v for k, v in merged.items()}, rm_head


def qwen2vl_key(key: str) -> str:
    """A Qwen2-VL state-dict key of transformers < 4.52 in transformers 5's layout (others unchanged)."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith(("model.embed_tokens.", "model.layers.", "model.norm.")):
        return "model.language_model." + key[len("model."):]
    return key


class QwenVLReward:
    """What VideoAlign and HPSv3 share: a Qwen2-VL whose vision embeddings are scattered into the
    prompt's pad tokens, run with plain 1-D positions, and read at reward tokens."""

    requires = ("transformers",)

    def _setup_model(self, base_dir, tokenizer_dir, special: tuple[str, ...], state: dict[str, torch.Tensor],
                     weights, device: str, precision: str, hint: str) -> None:
        from transformers import AutoConfig, AutoTokenizer, Qwen2VLForConditionalGeneration

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or base_dir))
        if any(t not in tok.get_vocab() for t in special):
            tok.add_special_tokens({"additional_special_tokens": list(special)})
        self.tokenizer = tok
        self.special_ids = [tok.convert_tokens_to_ids(t) for t in special]
        config = AutoConfig.from_pretrained(str(base_dir))
        model = Qwen2VLForConditionalGeneration(config)
        model.resize_token_embeddings(len(tok))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise UserError(f"{weights} does not fit {base_dir}'s architecture (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})", where="reward.path", hint=hint)
        self.device, self.dtype = placement(device, precision)
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        self.config = config
        vc = config.vision_config
        self.patch, self.temporal, self.merge = vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size

    @staticmethod
    def _template(path, required: tuple[str, ...], what: str) -> str:
        text = path.read_text(encoding="utf-8")  # byte for byte: trailing spaces matter
        missing = [r for r in ("{text_prompt}", *required) if r not in text]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}", where="reward.template_file", hint=f"it must be {what}")
        return text

    def prompt_ids(self, prompt: str, pad: str, tokens: int) -> torch.Tensor:
        """The chat the reference builds: system message, then the picture's pad tokens and the template."""
        text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + pad * tokens + "<|vision_end|>" + self.template.replace("{text_prompt}", prompt)
                + "<|im_end|>\n<|im_start|>assistant\n")
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]

    def hidden_states(self, patches: torch.Tensor, grid: torch.Tensor, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """Last (normed) hidden states (L, D) of one prompt whose `pad_id` slots hold the vision embeddings."""
        ids = ids.to(self.device)
        lm = self.model.model.language_model
        embeds = lm.embed_tokens(ids[None])
        vision = self.model.model.visual(patches.to(self.device, self.dtype), grid_thw=grid[None].to(self.device))
        vision = getattr(vision, "pooler_output", vision)
        slots = ids[None] == pad_id
        if int(slots.sum()) != vision.shape[0]:
            raise RuntimeError(f"{int(slots.sum())} vision slots for {vision.shape[0]} vision embeddings")
        embeds = embeds.masked_scatter(slots[..., None].expand_as(embeds), vision.to(embeds.dtype))
        # no position ids: plain 1-D positions in all three M-RoPE sections, as the reference runs it
        return lm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids[None]), position_ids=None).last_hidden_state[0]

    def at_token(self, hidden: torch.Tensor, ids: torch.Tensor, token: int) -> torch.Tensor:
        where = (ids.to(hidden.device) == token).nonzero()
        if where.numel() == 0:
            raise UserError(f"the template has no {self.tokenizer.convert_ids_to_tokens(token)}",
                            where="reward.template_file", hint="use the reward model's own template")
        return hidden[where[-1, 0]].float()

    def resized(self, frames: torch.Tensor, min_pixels: int, max_pixels: int) -> torch.Tensor:
        """Frames (T, 3, H, W) in 0-255 resized as Qwen2-VL's processor does (bicubic on uint8)."""
        h, w = smart_resize(frames.shape[-2], frames.shape[-1], self.patch * self.merge, min_pixels, max_pixels)
        frames = F.interpolate(frames.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return frames.round().clamp(0, 255)


class VideoAlignReward(QwenVLReward):
    """VideoAlign's VQ / MQ / TA scores of a video against its prompt (normalised as DanceGRPO does).

    `dimension` chooses the optimized score (DanceGRPO trains on VQ); all three and their sum
    (`overall`) are reported.
    """

    media = "video"
    sources = {
        "path": "the Hub id KlingTeam/VideoReward:checkpoint-11352/model.pth, or a local copy of that file",
        "base": "the Hub id Qwen/Qwen2-VL-2B-Instruct (its config and tokenizer only)",
        "tokenizer": "the Hub id KlingTeam/VideoReward (its tokenizer has the three reward tokens)",
        "template_file": "the `detailed_special` prompt of VideoAlign's prompt_template.py (github.com/KwaiVGI/VideoAlign), "
                         "saved byte for byte as a text file",
    }
    hub_patterns = {"path": (), "base": hub.CONFIG_AND_TOKENIZER, "tokenizer": hub.TOKENIZER}

    def __init__(
        self,
        *,
        path: Annotated[str, Doc("the checkpoint's model.pth (PEFT-wrapped state dict)")] = "",
        base: Annotated[str, Doc("Qwen2-VL-2B-Instruct folder (config and tokenizer)")] = "",
        tokenizer: Annotated[str, Doc("tokenizer folder with the three reward tokens (default: base, tokens added)")] = "",
        template_file: Annotated[str, Doc("text file of the prompt template, with {text_prompt}")] = "",
        dimension: Annotated[Literal["VQ", "MQ", "TA", "overall"], Doc("the optimized score")] = "VQ",
        normalize: Annotated[bool, Doc("(raw − mean) / std per dimension, as DanceGRPO")] = True,
        fps: Annotated[float, Range(ge=0), Doc("frames per second of the videos (0: the model's fps)")] = 0.0,
        sample_fps: Annotated[float, Range(gt=0), Doc("frames per second the reward looks at")] = 2.0,
        max_pixels: Annotated[int, Range(ge=784), Doc("frame area cap after resizing")] = 448 * 448,
        lora_rank: Annotated[int, Range(ge=1), Doc("rank of the checkpoint's adapters")] = 64,
        lora_alpha: Annotated[float, Range(gt=0), Doc("alpha of the checkpoint's adapters")] = 128.0,
        precision: Annotated[Literal["fp32", "bf16", "fp16"], Doc("weights (the reference runs bf16)")] = "bf16",
        device: Literal["auto", "cpu", "cuda"] = "auto",
    ) -> None:
        weights = require_path(path, "reward.path", "VIDEOALIGN_PATH", "VideoAlign checkpoint", self.hub_patterns["path"])
        base_dir = require_path(base, "reward.base", "QWEN2VL_PATH", "Qwen2-VL folder", self.hub_patterns["base"])
        template = require_path(template_file, "reward.template_file", "VIDEOALIGN_TEMPLATE", "prompt template")
        self.template = self._template(template, (), "VideoAlign's detailed_special template")
        tok_dir = require_path(tokenizer, "reward.tokenizer", "VIDEOALIGN_PATH", "tokenizer",
                                self.hub_patterns["tokenizer"]) if tokenizer else None
        raw = torch.load(str(weights), map_location="cpu", weights_only=True)
        state, rm_head = convert_checkpoint(raw, lora_alpha / lora_rank)
        self._setup_model(base_dir, tok_dir, SPECIAL, state, weights, device, precision,
                          "use the VideoReward checkpoint with the Qwen2-VL-2B-Instruct config")
        self.rm_head = rm_head.to(self.device, torch.float32)
        self.dimension, self.normalize, self.fps, self.sample_fps = dimension, normalize, fps, sample_fps
        self.max_pixels = max_pixels

    def prepare(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A video (F, 3, H, W) in [0, 1] → (patches, grid_thw) as the reference's processor makes them."""
        if not self.fps:
            raise UserError("the video's fps is unknown", where="reward.fps", hint="set reward.fps, or use a video model")
        idx = frame_indices(video.shape[0], self.fps, self.sample_fps)
        frames = self.resized((video[idx].float().clamp(0, 1) * 255).round(), 128 * 28 * 28, self.max_pixels)
        return patchify(frames, self.patch, self.temporal, self.merge)

    @torch.no_grad()
    def raw_scores(self, video: torch.Tensor, prompt: str) -> torch.Tensor:
        """(VQ, MQ, TA) before normalisation, for one video."""
        patches, grid = self.prepare(video)
        ids = self.prompt_ids(prompt, "<|video_pad|>", int(grid.prod()) // (self.merge**2))
        hidden = self.hidden_states(patches, grid, ids, self.config.video_token_id)
        # VQ, MQ, TA: each read at its own token
        return torch.stack([self.at_token(hidden, ids, t) @ self.rm_head[0] for t in self.special_ids]).cpu()

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        raw = torch.stack([self.raw_scores(v, p) for v, p in zip(videos, prompts, strict=True)])
        dims = {}
        for i, name in enumerate(("VQ", "MQ", "TA")):
            mean, std = NORMS[name]
            dims[name] = (raw[:, i] - mean) / std if self.normalize else raw[:, i]
        dims["overall"] = dims["VQ"] + dims["MQ"] + dims["TA"]
        return RewardOutput(dims[self.dimension].float(), {k: v.float() for k, v in dims.items()})

