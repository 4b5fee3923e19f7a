"""Tiny random checkpoints of the real reward models, written to disk in their released layouts, and
the rewards built on them: what the reward tests and the contract walk of every built-in share."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grpo.testing.tiny_diffusers import clip_tokenizer

# -- the CLIP family: an open_clip-layout checkpoint (HPS-v2.1) and a transformers CLIP folder --------
WIDTH, TEXT_WIDTH, LAYERS, HEADS, PATCH, IMAGE, PROJ = 32, 24, 2, 2, 7, 28, 16


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


def write_hps(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """HPS-v2.1's checkpoint (open_clip keys under ``module.``) and a CLIP tokenizer in `root`."""
    state = open_clip_state()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, root / "hps.pt")
    clip_tokenizer().save_pretrained(str(root / "tokenizer"))
    return root, state


def write_clip(folder: Path) -> Path:
    """A tiny transformers CLIP model with its tokenizer (PickScore, CLIP score, the aesthetic trunk)."""
    from transformers import CLIPConfig, CLIPModel

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


def write_aesthetic_head(path: Path) -> Path:
    """The LAION aesthetic predictor's MLP head (layers 0, 2, 4, 6, 7) on the tiny CLIP's projection."""
    dims = [PROJ, 32, 16, 8, 4, 1]
    torch.save({f"layers.{i}.{k}": torch.randn(dims[j + 1], dims[j]) if k == "weight" else torch.randn(dims[j + 1])
                for j, i in enumerate([0, 2, 4, 6, 7]) for k in ("weight", "bias")}, path)
    return path


# -- ImageReward: BLIP's ViT in timm's layout, a BLIP text encoder and the MLP head -------------------
BLIP_D, BLIP_LAYERS, BLIP_HEADS, BLIP_PATCH, BLIP_IMAGE, BLIP_TEXT = 32, 2, 2, 8, 32, 24


def vit_state(seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.1):
        return torch.randn(*shape, generator=g) * s

    st = {"cls_token": r(1, 1, BLIP_D), "pos_embed": r(1, (BLIP_IMAGE // BLIP_PATCH) ** 2 + 1, BLIP_D),
          "patch_embed.proj.weight": r(BLIP_D, 3, BLIP_PATCH, BLIP_PATCH), "patch_embed.proj.bias": r(BLIP_D),
          "norm.weight": 1 + r(BLIP_D), "norm.bias": r(BLIP_D)}
    for i in range(BLIP_LAYERS):
        p = f"blocks.{i}."
        st.update({p + "norm1.weight": 1 + r(BLIP_D), p + "norm1.bias": r(BLIP_D), p + "attn.qkv.weight": r(3 * BLIP_D, BLIP_D),
                   p + "attn.qkv.bias": r(3 * BLIP_D), p + "attn.proj.weight": r(BLIP_D, BLIP_D), p + "attn.proj.bias": r(BLIP_D),
                   p + "norm2.weight": 1 + r(BLIP_D), p + "norm2.bias": r(BLIP_D), p + "mlp.fc1.weight": r(4 * BLIP_D, BLIP_D),
                   p + "mlp.fc1.bias": r(4 * BLIP_D), p + "mlp.fc2.weight": r(BLIP_D, 4 * BLIP_D), p + "mlp.fc2.bias": r(BLIP_D)})
    return st


def write_imagereward(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """``ImageReward.pt`` (BLIP vision and text encoders and the head) and a BERT tokenizer in `root`."""
    from transformers import BertTokenizerFast, BlipTextConfig, BlipTextModel

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "circle", "square",
             "triangle", "two", "three", "on", "background", "circles", "squares", "triangles", "yellow", "one"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(root / "tok"))
    torch.manual_seed(0)
    text = BlipTextModel(BlipTextConfig(vocab_size=len(tok) + 2, hidden_size=BLIP_TEXT, encoder_hidden_size=BLIP_D,
                                        intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=40, is_decoder=True, pad_token_id=0),
                         add_pooling_layer=False)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit_state().items()}
    state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    dims = [BLIP_TEXT, 16, 8, 8, 4, 1]
    for j, i in enumerate([0, 2, 4, 6, 7]):
        state[f"mlp.layers.{i}.weight"] = torch.randn(dims[j + 1], dims[j]) * 0.3
        state[f"mlp.layers.{i}.bias"] = torch.randn(dims[j + 1]) * 0.1
    state["blip.vision_proj.weight"] = torch.randn(4, BLIP_D)  # present in the release, unused by the score
    torch.save(state, root / "ImageReward.pt")
    return root, state


def make_imagereward(root: Path, **kw):
    from grpo.plugins.rewards.imagereward import ImageRewardReward

    return ImageRewardReward(path=str(root / "ImageReward.pt"), tokenizer=str(root / "tok"), vision_heads=BLIP_HEADS,
                             text_heads=2, device="cpu", **kw)


# -- VideoAlign: a Qwen2-VL base and a VideoReward-style LoRA checkpoint with its head -----------------
VIDEO_TEMPLATE = "\nRate this video.  \nPrompt: {text_prompt}\nQuality <|VQ_reward|> motion <|MQ_reward|> text <|TA_reward|> "
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_videoalign(root: Path):
    """A Qwen2-VL base folder, and a VideoReward-style checkpoint: PEFT-wrapped LoRA (r 4, α 8) in
    transformers 4.46's key layout, plus an rm_head; returns them with the unmerged peft model."""
    from peft import LoraConfig, get_peft_model

    from grpo.testing.tiny_vlm import tiny_qwen2vl

    model, _ = tiny_qwen2vl(root / "base", extra_tokens=3)  # the three reward tokens, after the base vocabulary
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.05)
    peft.eval()
    state = {}
    for key, value in peft.state_dict().items():  # back to transformers 4.46's layout
        key = key.replace("base_model.model.model.language_model.", "base_model.model.model.")
        key = key.replace("base_model.model.model.visual.", "base_model.model.visual.")
        state[key] = value.clone()
    rm_head = torch.randn(1, 64) * 0.1
    state["base_model.model.rm_head.weight"] = rm_head
    torch.save(state, root / "model.pth")
    (root / "template.txt").write_text(VIDEO_TEMPLATE, encoding="utf-8")
    return root, peft, rm_head


def make_videoalign(root: Path, **kw):
    from grpo.plugins.rewards.videoalign import VideoAlignReward

    return VideoAlignReward(path=str(root / "model.pth"), base=str(root / "base"), template_file=str(root / "template.txt"),
                            lora_rank=4, lora_alpha=8.0, fps=16.0, precision="fp32", device="cpu", **kw)


def video(seed: int, frames: int = 5) -> torch.Tensor:
    return torch.rand(frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- HPSv3: a Qwen2-VL with the ranknet head in one safetensors file ----------------------------------
HPSV3_TEMPLATE = "You judge images.\nTextual prompt - {text_prompt}\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
PIXELS = 4 * 28 * 28  # tiny: 4 merged tokens per image


def write_hpsv3(root: Path):
    from safetensors.torch import save_file

    from grpo.testing.tiny_vlm import tiny_qwen2vl

    model, _ = tiny_qwen2vl(root / "base", extra_tokens=1)  # <|Reward|>
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    head = {"rm_head.0.weight": torch.randn(32, 64) * 0.2, "rm_head.0.bias": torch.randn(32) * 0.1,
            "rm_head.3.weight": torch.randn(16, 32) * 0.2, "rm_head.3.bias": torch.randn(16) * 0.1,
            "rm_head.5.weight": torch.randn(2, 16) * 0.2, "rm_head.5.bias": torch.randn(2) * 0.1}
    save_file({**state, **head}, str(root / "HPSv3.safetensors"))
    (root / "template.txt").write_text(HPSV3_TEMPLATE)
    return root, model, head


def make_hpsv3(root: Path, **kw):
    from grpo.plugins.rewards.hpsv3 import HPSv3Reward

    return HPSv3Reward(path=str(root / "HPSv3.safetensors"), base=str(root / "base"),
                       template_file=str(root / "template.txt"), pixels=PIXELS, precision="fp32", device="cpu", **kw)


# -- the http reward: a stub OpenAI-compatible judge on loopback -------------------------------------
class Judge(BaseHTTPRequestHandler):
    """Answers by the caption: 'good' → 4, 'bad' → no rating, 'slow' → too late, 'flaky' → a 500
    first, then 3; 'moved' → a 302 to `elsewhere`; 'trickle' → a valid answer a byte every 50 ms;
    'flood' → a valid answer padded to 8 MiB; anything else → a rating from the image's mean red (1 + 4·red)."""

    calls: dict[str, int] = {}
    seen: list[dict] = []
    elsewhere = ""  # where 'moved' sends the client

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = body["messages"][0]["content"]
        text = next(c["text"] for c in content if c["type"] == "text")
        caption = text.rsplit("Caption: [", 1)[1].rstrip("]")
        Judge.calls[caption] = Judge.calls.get(caption, 0) + 1
        if "slow" in caption:
            time.sleep(1.5)
        if "moved" in caption:
            self.send_response(302)
            self.send_header("Location", Judge.elsewhere + "/v1/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "trickle" in caption or "flood" in caption:
            data = json.dumps({"choices": [{"message": {"content": "Final Score: 4"}}]}).encode()
            if "flood" in caption:
                data += b" " * (8 * 2**20)  # still a valid answer, if read whole
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(0, len(data), 1 if "trickle" in caption else 2**16):
                    self.wfile.write(data[i: i + (1 if "trickle" in caption else 2**16)])
                    self.wfile.flush()
                    if "trickle" in caption:
                        time.sleep(0.05)
            except OSError:  # the client gave up
                pass
            return
        if "flaky" in caption and Judge.calls[caption] == 1:
            self.send_response(500)
            self.end_headers()
            return
        if "good" in caption:
            answer = "Looks right.\nFinal Score: 4"
        elif "bad" in caption:
            answer = "I cannot tell."
        elif "flaky" in caption:
            answer = "Final Score: 3"
        else:
            url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            red = float(np.asarray(image.convert("RGB"), dtype=np.float32)[..., 0].mean()) / 255
            answer = f"Final Score: {1 + 4 * red:.4f}"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve() -> Iterator[str]:
    """The judge on a free loopback port, for the duration: its base URL. It starts with no request
    seen (the counts and requests are the judge's, shared by every server)."""
    Judge.calls.clear()
    Judge.seen.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
