"""The tiny text-to-image flow-matching model of the `shapes` world.

It is built from the same library components as the real models: a word-level tokenizer
(``tokenizers`` + ``PreTrainedTokenizerFast``), a small ``CLIPTextModel`` and a diffusers
``UNet2DConditionModel`` working directly in pixel space (3×32×32, values in [-1, 1]). It is saved
and loaded with ``save_pretrained`` / ``from_pretrained`` in a diffusers-style folder::

    <path>/tokenizer/      tokenizer.json + config
    <path>/text_encoder/   config.json + model.safetensors
    <path>/unet/           config.json + diffusion_pytorch_model.safetensors
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from .world import IMAGE_SIZE, vocabulary

MAX_TOKENS = 12
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
TEXT_DIM = 64


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the shapes vocabulary, made in code (no download)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=MAX_TOKENS,
    )


def text_encoder_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        projection_dim=TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )


def unet_config(channels: tuple[int, int, int] = (32, 64, 128)) -> dict:
    """Three resolutions (32, 16, 8); self- and cross-attention at 8×8; pooled text as class embedding."""
    return dict(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=TEXT_DIM,
    )


def build_fresh(
    seed: int = 0, *, channels: tuple[int, int, int] = (32, 64, 128), zero_output: bool = True
) -> tuple[PreTrainedTokenizerFast, CLIPTextModel, UNet2DConditionModel]:
    """Random-weight components (the shipped architecture by default; smaller `channels` for tests)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(text_encoder_config(len(tokenizer)))
    unet = UNet2DConditionModel(**unet_config(channels))
    if zero_output:  # starting at v = 0 trains faster
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
    return tokenizer, text_encoder, unet


def save_components(path: str | Path, tokenizer, text_encoder, unet) -> None:
    path = Path(path)
    tokenizer.save_pretrained(path / "tokenizer")
    text_encoder.save_pretrained(path / "text_encoder")
    unet.save_pretrained(path / "unet")


def load_components(path: str | Path):
    path = Path(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    unet = UNet2DConditionModel.from_pretrained(path / "unet")
    return tokenizer, text_encoder.eval(), unet


def encode_text(tokenizer, text_encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden (N, L, D), attention mask (N, L), pooled (N, D)) for a list of captions."""
    device = next(text_encoder.parameters()).device
    batch = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    out = text_encoder(input_ids=ids, attention_mask=mask)
    return out.last_hidden_state, mask, out.pooler_output


def unet_velocity(unet, x: torch.Tensor, sigma: torch.Tensor, hidden, mask, pooled) -> torch.Tensor:
    """Velocity v = ε − x0 predicted at noise level σ (shape (N,)), timestep fed as 1000·σ.

    Inputs are cast to the UNet's weight dtype (bf16 under a bf16 backend); the result is fp32."""
    dtype = unet.dtype
    return unet(
        x.to(dtype),
        timestep=sigma * 1000.0,
        encoder_hidden_states=hidden.to(dtype),
        encoder_attention_mask=mask,
        class_labels=pooled.to(dtype),
        return_dict=False,
    )[0].float()
