"""A tiny random Qwen2-VL (the architecture of VideoAlign and HPSv3) and a byte-level tokenizer with
Qwen's special tokens, built in code so that nothing is downloaded."""

from __future__ import annotations

QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]


def qwen_tokenizer(extra: list[str] = ()):
    """Byte-level BPE without merges (every byte a token) plus Qwen's special tokens and `extra`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    tok.add_special_tokens({"additional_special_tokens": QWEN_TOKENS + list(extra)})
    return tok


def tiny_qwen2vl(folder, extra_tokens: int, seed: int = 0):
    """A base folder (config and tokenizer, as Qwen2-VL-*-Instruct ships) under `folder`, and a random
    model on it whose embeddings hold `extra_tokens` added reward tokens; returns (model, tokenizer)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    tok = qwen_tokenizer()
    config = tiny_qwen2vl_config(tok)
    config.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.resize_token_embeddings(len(tok) + extra_tokens)
    return model, tok


def tiny_qwen2vl_config(tok, hidden: int = 64):
    """Qwen2-VL with 2 text layers (4 heads, 2 KV heads, M-RoPE sections 2+3+3) and a 2-block
    vision tower with Qwen's real patching (14-pixel patches, 2 frames, 2×2 merge)."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=4, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, mlp_ratio=2),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), tie_word_embeddings=True)
