"""CLIP-family rewards on tiny random models: the open_clip → transformers key mapping against an
independent open_clip-style forward, preprocessing against hand-computed cases and transformers'
own processor, score formulas, and the reward contract (batching, dtype, determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_rewards import (
    HEADS,
    IMAGE,
    LAYERS,
    PATCH,
    PROJ,
    TEXT_WIDTH,
    WIDTH,
    open_clip_state,
    write_aesthetic_head,
    write_clip,
    write_hps,
)

from grpo.core.errors import UserError
from grpo.plugins.rewards.clip import (
    AestheticReward,
    ClipScoreReward,
    HPSv2Reward,
    PickScoreReward,
    normalize,
    open_clip_to_hf,
    pil_short_side_crop,
    resize_max_pad,
    tensor_short_side_crop,
)
from grpo.testing import check_reward, tiny_images


def pictures(n: int, size: int | tuple[int, int] = 32):
    """Rendered shapes images resized to `size` (H, W), with their captions."""
    images, prompts = tiny_images(n)
    hw = (size, size) if isinstance(size, int) else size
    return F.interpolate(images, size=hw, mode="bilinear", align_corners=False).clamp(0, 1), prompts


# -- an independent forward of the open_clip-layout checkpoint (tiny_rewards.open_clip_state) -----------
def _block(x, s, p, heads, causal):
    n, L, d = x.shape
    h = F.layer_norm(x, (d,), s[p + "ln_1.weight"], s[p + "ln_1.bias"])
    q, k, v = (h @ s[p + "attn.in_proj_weight"].t() + s[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.view(n, L, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if causal:
        att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(n, L, d)
    x = x + o @ s[p + "attn.out_proj.weight"].t() + s[p + "attn.out_proj.bias"]
    h = F.layer_norm(x, (d,), s[p + "ln_2.weight"], s[p + "ln_2.bias"])
    h = F.gelu(h @ s[p + "mlp.c_fc.weight"].t() + s[p + "mlp.c_fc.bias"])
    return x + h @ s[p + "mlp.c_proj.weight"].t() + s[p + "mlp.c_proj.bias"]


def open_clip_forward(s, pixels, tokens):
    """open_clip's ViT and text transformer, written from its layout (not from transformers)."""
    x = F.conv2d(pixels, s["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1) + s["visual.positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), s["visual.ln_pre.weight"], s["visual.ln_pre.bias"])
    for i in range(LAYERS):
        x = _block(x, s, f"visual.transformer.resblocks.{i}.", HEADS, False)
    img = F.layer_norm(x[:, 0], (WIDTH,), s["visual.ln_post.weight"], s["visual.ln_post.bias"]) @ s["visual.proj"]
    t = s["token_embedding.weight"][tokens] + s["positional_embedding"][: tokens.shape[1]]
    for i in range(LAYERS):
        t = _block(t, s, f"transformer.resblocks.{i}.", HEADS, True)
    t = F.layer_norm(t, (TEXT_WIDTH,), s["ln_final.weight"], s["ln_final.bias"])
    eot = (tokens == 1).int().argmax(dim=1)  # the first end-of-text token of each prompt
    txt = t[torch.arange(t.shape[0]), eot] @ s["text_projection"]
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory):
    return write_hps(tmp_path_factory.mktemp("hps"))


def test_open_clip_mapping_computes_the_same_features(hps_files):
    root, state = hps_files
    reward = HPSv2Reward(path=str(root / "hps.pt"), tokenizer=str(root / "tokenizer"), vision_heads=HEADS,
                         text_heads=HEADS, device="cpu")
    images, prompts = pictures(4, 20)
    img, txt = reward.features(images, prompts)
    pixels = normalize(resize_max_pad(images, IMAGE))
    tokens = reward.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    want_img, want_txt = open_clip_forward(state, pixels, tokens["input_ids"])
    torch.testing.assert_close(img, want_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(txt, want_txt, rtol=1e-4, atol=1e-5)
    # HPS-v2.1 is the raw cosine, no logit scale
    torch.testing.assert_close(reward.score(images, prompts).scores, (want_img * want_txt).sum(-1), rtol=1e-4, atol=1e-5)
    check_reward(reward, images, prompts)


def test_mapping_covers_every_key_and_refuses_strangers():
    state = open_clip_state()
    converted = open_clip_to_hf(state)
    assert len(converted) == len(state) + 2 * LAYERS * 4  # per tower and layer, in_proj weight and bias become three each
    assert converted["visual_projection.weight"].shape == (PROJ, WIDTH)
    with pytest.raises(ValueError, match="unexpected open_clip key"):
        open_clip_to_hf({"visual.head.weight": torch.zeros(1)})


def test_resize_max_pad_is_open_clips():
    img = torch.rand(1, 3, 10, 20)
    out = resize_max_pad(img, 28)
    assert out.shape == (1, 3, 28, 28)
    # 10×20 scaled by 1.4 → 14×28, padded by 7 rows above and below with black
    assert torch.equal(out[:, :, :7], torch.zeros(1, 3, 7, 28)) and torch.equal(out[:, :, 21:], torch.zeros(1, 3, 7, 28))
    want = F.interpolate(img, size=(14, 28), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(out[:, :, 7:21], want)


def test_pil_preprocessing_matches_transformers_processor():
    from transformers import CLIPImageProcessor

    images, _ = pictures(3, (30, 44))  # not square: the short side is resized, the long one cropped
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    pil = [torch.from_numpy(np.asarray(i)) for i in images.mul(255).round().byte().permute(0, 2, 3, 1)]
    want = processor(images=[p.numpy() for p in pil], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(normalize(pil_short_side_crop(images, 28)), want, rtol=1e-5, atol=1e-5)


def test_tensor_crop_keeps_the_centre():
    img = torch.rand(1, 3, 28, 56)
    out = tensor_short_side_crop(img, 28)
    assert out.shape == (1, 3, 28, 28)
    torch.testing.assert_close(out, img[:, :, :, 14:42])  # no resize needed: a pure centre crop


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip"))


def test_pickscore_scalings(clip_folder):
    images, prompts = pictures(4, 32)
    raw = PickScoreReward(path=str(clip_folder), device="cpu").score(images, prompts)
    cos = raw.components["cosine"]
    torch.testing.assert_close(raw.scores, cos)
    scale = float(PickScoreReward(path=str(clip_folder), device="cpu").model.logit_scale.exp())
    for scaling, want in (("logit", scale * cos), ("flow-grpo", 100 * cos / 26), ("mixgrpo", (100 * cos - 18) / 8)):
        got = PickScoreReward(path=str(clip_folder), scaling=scaling, device="cpu").score(images, prompts).scores
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda f, h: PickScoreReward(path=str(f), device="cpu"),
    lambda f, h: ClipScoreReward(path=str(f), variant="flow-grpo", device="cpu"),
    lambda f, h: ClipScoreReward(path=str(f), variant="dancegrpo", device="cpu"),
    lambda f, h: AestheticReward(path=str(f), head=str(h), device="cpu"),
], ids=["pickscore", "clip-score-flow-grpo", "clip-score-dancegrpo", "aesthetic"])
def test_rewards_keep_the_contract(make, clip_folder, tmp_path):
    head = write_aesthetic_head(tmp_path / "head.pth")
    images, prompts = pictures(5, 36)
    check_reward(make(clip_folder, head), images, prompts)


def test_aesthetic_head_is_affine(clip_folder, tmp_path):
    head = tmp_path / "head.pth"
    dims = [PROJ, 32, 16, 8, 4, 1]
    state = {}
    for j, i in enumerate([0, 2, 4, 6, 7]):
        state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = torch.randn(dims[j + 1], dims[j]), torch.randn(dims[j + 1])
    torch.save(state, head)
    reward = AestheticReward(path=str(clip_folder), head=str(head), device="cpu")
    images, prompts = pictures(3, 32)
    emb = reward.model.get_image_features(pixel_values=normalize(pil_short_side_crop(images, IMAGE)))
    emb = F.normalize(getattr(emb, "pooler_output", emb), dim=-1)
    w, b = torch.eye(PROJ), torch.zeros(PROJ)  # compose the five layers into one affine map
    for i in [0, 2, 4, 6, 7]:
        w, b = state[f"layers.{i}.weight"] @ w, state[f"layers.{i}.weight"] @ b + state[f"layers.{i}.bias"]
    torch.testing.assert_close(reward.score(images, prompts).scores, (emb @ w.t() + b)[:, 0].detach(), rtol=1e-4, atol=1e-4)


def test_missing_weights_name_the_key_and_the_variable(tmp_path):
    with pytest.raises(UserError) as e:
        HPSv2Reward(path="", tokenizer="")
    assert e.value.where == "reward.path" and "HPS_PATH" in e.value.hint
    with pytest.raises(UserError) as e:
        PickScoreReward(path=str(tmp_path / "nope"))
    assert e.value.where == "reward.path" and "does not exist" in e.value.message


def test_rewards_load_by_hub_id_from_the_cache_offline(hps_files, clip_folder, tmp_path, monkeypatch):
    """A single file (`owner/name:file`) and whole folders by id, from a Hub cache in its real
    layout, with HF_HUB_OFFLINE=1: the same scores as the local copies."""
    from grpo.testing.hub_cache import add_to_hub_cache

    root, _ = hps_files
    cache = tmp_path / "hf" / "hub"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_hub_cache(cache, "tiny/hps", root, files=["hps.pt"])
    add_to_hub_cache(cache, "tiny/clip-tokenizer", root / "tokenizer")
    add_to_hub_cache(cache, "tiny/pickscore", clip_folder)
    images, prompts = pictures(3, 24)
    local = HPSv2Reward(path=str(root / "hps.pt"), tokenizer=str(root / "tokenizer"), vision_heads=HEADS,
                        text_heads=HEADS, device="cpu").score(images, prompts).scores
    by_id = HPSv2Reward(path="tiny/hps:hps.pt", tokenizer="tiny/clip-tokenizer", vision_heads=HEADS,
                        text_heads=HEADS, device="cpu").score(images, prompts).scores
    torch.testing.assert_close(by_id, local, rtol=0, atol=0)
    local = PickScoreReward(path=str(clip_folder), device="cpu").score(images, prompts).scores
    by_id = PickScoreReward(path="tiny/pickscore", processor="tiny/clip-tokenizer", device="cpu").score(images, prompts)
    torch.testing.assert_close(by_id.scores, local, rtol=0, atol=0)
    with pytest.raises(UserError) as e:
        PickScoreReward(path="tiny/absent", device="cpu")
    assert e.value.where == "reward.path" and "hf download tiny/absent --include" in e.value.hint
