"""CLIP-family rewards on tiny random models: the open_clip → transformers key mapping against an
independent open_clip-style forward, preprocessing against hand-computed cases and transformers'
own processor, score formulas, and the reward contract (batching, dtype, determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
from grpo.testing.tiny_diffusers import clip_tokenizer


def pictures(n: int, size: int | tuple[int, int] = 32):
    """Rendered shapes images resized to `size` (H, W), with their captions."""
    images, prompts = tiny_images(n)
    hw = (size, size) if isinstance(size, int) else size
    return F.interpolate(images, size=hw, mode="bilinear", align_corners=False).clamp(0, 1), prompts


WIDTH, TEXT_WIDTH, LAYERS, HEADS, PATCH, IMAGE, PROJ = 32, 24, 2, 2, 7, 28, 16


# -- an open_clip-layout checkpoint and an independent forward of it -----------------------------------
def open_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    vocab = len(clip_tokenizer())
    s = {"visual.conv1.weight": r(WIDTH, 3, PATCH, PATCH), "visual.class_embedding": r(WIDTH),
         "visual.positional_embedding": r((IMAGE // PATCH) ** 2 + 1, WIDTH), "visual.proj": r(WIDTH, PROJ),
         "token_embedding.weight": r(vocab, TEXT_WIDTH), "positional_embedding": r(77, TEXT_WIDTH),
         "text_projection": r(TEXT_WIDTH, PROJ), "logit_scale": torch.tensor(math.log(100.0))}
    for name, width in (("visual.ln_pre", WIDTH), ("visual.ln_post", WIDTH), ("ln_final", TEXT_WIDTH)):
        s[f"{name}.weight"], s[f"{name}.bias"] = 1 + r(width, scale=0.05), r(width, scale=0.05)
    for tower, width in (("visual.transformer", WIDTH), ("transformer", TEXT_WIDTH)):
        for i in range(LAYERS):
            p = f"{tower}.resblocks.{i}."
            s[p + "attn.in_proj_weight"], s[p + "attn.in_proj_bias"] = r(3 * width, width), r(3 * width)
            s[p + "attn.out_proj.weight"], s[p + "attn.out_proj.bias"] = r(width, width), r(width)
            s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"] = r(4 * width, width), r(4 * width)
            s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"] = r(width, 4 * width), r(width)
            for ln in ("ln_1", "ln_2"):
                s[p + ln + ".weight"], s[p + ln + ".bias"] = 1 + r(width, scale=0.05), r(width, scale=0.05)
    return s


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
    root = tmp_path_factory.mktemp("hps")
    state = open_clip_state()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, root / "hps.pt")
    clip_tokenizer().save_pretrained(str(root / "tokenizer"))
    return root, state


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
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    tok = clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=TEXT_WIDTH, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=1, bos_token_id=0,
                         pad_token_id=1),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE, patch_size=PATCH),
        projection_dim=PROJ)
    CLIPModel(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


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
    head = tmp_path / "head.pth"
    dims = [PROJ, 32, 16, 8, 4, 1]
    torch.save({f"layers.{i}.{k}": torch.randn(dims[j + 1], dims[j]) if k == "weight" else torch.randn(dims[j + 1])
                for j, i in enumerate([0, 2, 4, 6, 7]) for k in ("weight", "bias")}, head)
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
