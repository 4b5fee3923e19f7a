"""Tiny random-weight FLUX, SD3 and Wan pipelines built from their real classes, saved like a real
model folder, so that the model plugins are tested through the same loading code as real weights.

Tokenizers are made in code (a byte-level CLIP BPE without merges, a character-level T5), so
nothing is downloaded. Every builder returns the folder it wrote.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch


def clip_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    letters = string.ascii_letters
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -1.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_text(vocab: int, hidden: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(vocab: int, d_model: int, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(vocab_size=vocab, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                  relative_attention_num_buckets=8, dropout_rate=0.0)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def _vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(4, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, sample_size=32,
                         scaling_factor=1.5, shift_factor=0.1).eval()


# The schedulers of the real model folders (their scheduler_config.json), so that a tiny pipeline
# samples on the grid the real one does.
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)  # black-forest-labs/FLUX.1-dev
SD35_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # stabilityai/stable-diffusion-3.5-medium
WAN_SCHEDULER = dict(num_train_timesteps=1000, flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction",
                     solver_order=2, final_sigmas_type="zero")  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers (UniPC)


def tiny_flux(folder: str | Path, seed: int = 0) -> Path:
    """FLUX.1-dev-shaped: guidance embedding, CLIP + T5, 4 latent channels packed 2×2 (32×32 images)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=_vae(4), text_encoder=_clip_text(len(tok)),
        tokenizer=tok,
        text_encoder_2=_t5(len(tok2), 32), tokenizer_2=tok2,
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8]),
    )
    pipe.save_pretrained(str(folder))
    return Path(folder)


def tiny_sd3(folder: str | Path, seed: int = 0) -> Path:
    """SD3.5-shaped: two CLIP encoders with projections and a T5, 4 latent channels (32×32 images)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER), vae=_vae(4),
        text_encoder=_clip_text(len(tok), projection=True), tokenizer=tok,
        text_encoder_2=_clip_text(len(tok), projection=True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(len(tok3), 64), tokenizer_3=tok3,
        transformer=SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=1,
                                          attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                          joint_attention_dim=64, pooled_projection_dim=64, out_channels=4),
    )
    pipe.save_pretrained(str(folder))
    return Path(folder)


def tiny_wan(folder: str | Path, seed: int = 0) -> Path:
    """Wan2.1-T2V-shaped: UMT5 text encoder, the 3D Wan VAE (time ÷4, space ÷8), 3D patches (1, 2, 2)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    pipe = WanPipeline(
        tokenizer=tok, text_encoder=_t5(len(tok), 32, umt5=True),
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]).eval(),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER),
        transformer=WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                          in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                          num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                          rope_max_seq_len=32),
    )
    pipe.save_pretrained(str(folder))
    return Path(folder)
