"""ImageReward on a tiny random BLIP: the ViT's timm layout mapped onto BlipVisionModel against an
independent forward, full key coverage, the head and normalisation, preprocessing and the contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grpo.core.errors import UserError
from grpo.plugins.rewards.clip import normalize, pil_short_side_crop
from grpo.plugins.rewards.imagereward import MEAN, STD, ImageRewardReward
from grpo.testing import tiny_images

D, LAYERS, HEADS, PATCH, IMAGE, TEXT = 32, 2, 2, 8, 32, 24


def vit_state(seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.1):
        return torch.randn(*shape, generator=g) * s

    st = {"cls_token": r(1, 1, D), "pos_embed": r(1, (IMAGE // PATCH) ** 2 + 1, D),
          "patch_embed.proj.weight": r(D, 3, PATCH, PATCH), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(LAYERS):
        p = f"blocks.{i}."
        st.update({p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D), p + "attn.qkv.weight": r(3 * D, D),
                   p + "attn.qkv.bias": r(3 * D), p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D),
                   p + "norm2.weight": 1 + r(D), p + "norm2.bias": r(D), p + "mlp.fc1.weight": r(4 * D, D),
                   p + "mlp.fc1.bias": r(4 * D), p + "mlp.fc2.weight": r(D, 4 * D), p + "mlp.fc2.bias": r(D)})
    return st


def vit_forward(st, pixels):
    """BLIP's ViT (timm layout: fused qkv, pre-norm blocks, LayerNorm eps 1e-6), the whole normed sequence."""
    x = F.conv2d(pixels, st["patch_embed.proj.weight"], st["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([st["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + st["pos_embed"]
    n, L, _ = x.shape
    for i in range(LAYERS):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (D,), st[p + "norm1.weight"], st[p + "norm1.bias"], eps=1e-6)
        qkv = (h @ st[p + "attn.qkv.weight"].t() + st[p + "attn.qkv.bias"]).view(n, L, 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(D // HEADS)).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(n, L, D) @ st[p + "attn.proj.weight"].t() + st[p + "attn.proj.bias"]
        h = F.layer_norm(x, (D,), st[p + "norm2.weight"], st[p + "norm2.bias"], eps=1e-6)
        x = x + F.gelu(h @ st[p + "mlp.fc1.weight"].t() + st[p + "mlp.fc1.bias"]) @ st[p + "mlp.fc2.weight"].t() + st[p + "mlp.fc2.bias"]
    return F.layer_norm(x, (D,), st["norm.weight"], st["norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from transformers import BertTokenizerFast, BlipTextConfig, BlipTextModel

    root = tmp_path_factory.mktemp("imagereward")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "circle", "square",
             "triangle", "two", "three", "on", "background", "circles", "squares", "triangles", "yellow", "one"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(root / "tok"))
    torch.manual_seed(0)
    text = BlipTextModel(BlipTextConfig(vocab_size=len(tok) + 2, hidden_size=TEXT, encoder_hidden_size=D,
                                        intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=40, is_decoder=True, pad_token_id=0),
                         add_pooling_layer=False)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit_state().items()}
    state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    dims = [TEXT, 16, 8, 8, 4, 1]
    for j, i in enumerate([0, 2, 4, 6, 7]):
        state[f"mlp.layers.{i}.weight"] = torch.randn(dims[j + 1], dims[j]) * 0.3
        state[f"mlp.layers.{i}.bias"] = torch.randn(dims[j + 1]) * 0.1
    state["blip.vision_proj.weight"] = torch.randn(4, D)  # present in the release, unused by the score
    torch.save(state, root / "ImageReward.pt")
    return root, state


def make(root, **kw):
    return ImageRewardReward(path=str(root / "ImageReward.pt"), tokenizer=str(root / "tok"), vision_heads=HEADS,
                             text_heads=2, device="cpu", **kw)


def test_vision_mapping_matches_blips_vit(files):
    root, state = files
    reward = make(root)
    images, _ = tiny_images(3)
    pixels = normalize(pil_short_side_crop(images, IMAGE, round_crop=True))
    want = vit_forward({k[len("blip.visual_encoder."):]: v for k, v in state.items()
                        if k.startswith("blip.visual_encoder.")}, pixels)
    torch.testing.assert_close(reward.vision(pixel_values=pixels).last_hidden_state, want, rtol=1e-4, atol=1e-5)


def test_score_is_the_normalised_head_on_the_first_token(files):
    root, state = files
    reward = make(root)
    images, prompts = tiny_images(4)
    out = reward.score(images, prompts)
    torch.testing.assert_close(out.scores, (out.components["raw"] - MEAN) / STD)
    # the head is affine (no activations): one matrix product of the five layers
    w, b = torch.eye(TEXT), torch.zeros(TEXT)
    for i in [0, 2, 4, 6, 7]:
        w, b = state[f"mlp.layers.{i}.weight"] @ w, state[f"mlp.layers.{i}.weight"] @ b + state[f"mlp.layers.{i}.bias"]
    pixels = normalize(pil_short_side_crop(images, IMAGE, round_crop=True))
    tokens = reward.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert tokens["input_ids"].shape[1] == 35 and reward.tokenizer.convert_tokens_to_ids("[DEC]") == len(
        reward.tokenizer) - 2
    with torch.no_grad():
        first = reward.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                            encoder_hidden_states=reward.vision(pixel_values=pixels).last_hidden_state,
                            is_decoder=False).last_hidden_state[:, 0]
    torch.testing.assert_close(out.components["raw"], (first @ w.t() + b)[:, 0], rtol=1e-4, atol=1e-5)


def test_contract_and_strict_coverage(files, tmp_path):
    from grpo.testing import check_reward

    root, state = files
    images, prompts = tiny_images(5)
    check_reward(make(root), images, prompts)
    broken = dict(state)
    del broken["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    torch.save(broken, tmp_path / "ImageReward.pt")
    with pytest.raises(UserError, match="do not fit"):
        ImageRewardReward(path=str(tmp_path / "ImageReward.pt"), tokenizer=str(root / "tok"), vision_heads=HEADS,
                          text_heads=2, device="cpu")


def test_centre_crop_offsets():
    img = torch.rand(1, 3, 32, 43)  # an 11-pixel surplus: torchvision rounds the offset (6), CLIPProcessor floors (5)
    floor = pil_short_side_crop(img, 32)
    rounded = pil_short_side_crop(img, 32, round_crop=True)
    assert floor.shape == rounded.shape == (1, 3, 32, 32)
    torch.testing.assert_close(rounded[..., :-1], floor[..., 1:])
