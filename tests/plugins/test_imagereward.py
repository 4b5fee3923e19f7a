"""ImageReward on a tiny random BLIP: the ViT's timm layout mapped onto BlipVisionModel against an
independent forward, full key coverage, the head and normalisation, preprocessing and the contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_rewards import BLIP_D as D
from tiny_rewards import BLIP_HEADS as HEADS
from tiny_rewards import BLIP_IMAGE as IMAGE
from tiny_rewards import BLIP_LAYERS as LAYERS
from tiny_rewards import BLIP_PATCH as PATCH
from tiny_rewards import BLIP_TEXT as TEXT
from tiny_rewards import make_imagereward, write_imagereward

from grpo.core.errors import UserError
from grpo.plugins.rewards.clip import normalize, pil_short_side_crop
from grpo.plugins.rewards.imagereward import MEAN, STD, ImageRewardReward
from grpo.testing import tiny_images


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
    return write_imagereward(tmp_path_factory.mktemp("imagereward"))


make = make_imagereward


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
