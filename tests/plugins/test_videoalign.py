"""VideoAlign on a tiny random Qwen2-VL: frame sampling, resizing and patchify against hand-computed
cases, the PEFT checkpoint's merge and key move against peft's own unmerged forward, 1-D positions,
the reward tokens' order, the reward contract, and a BranchGRPO iteration of a tiny Wan with it."""

from __future__ import annotations

import pytest
import torch
from tiny_rewards import make_videoalign, video, write_videoalign

from grpo.core.errors import UserError
from grpo.plugins.rewards.clip import CLIP_MEAN, CLIP_STD
from grpo.plugins.rewards.videoalign import VideoAlignReward, frame_indices, patchify, smart_resize


def test_frame_indices():
    idx = frame_indices(53, 8.0)  # DanceGRPO's HunyuanVideo: 53 frames at 8 fps
    assert idx.numel() == 14 and idx[0] == 0 and idx[-1] == 52
    assert torch.equal(idx, torch.linspace(0, 52, 14).round().long())
    assert frame_indices(5, 16.0).tolist() == [0, 1, 3, 4]  # at least 4 frames
    assert frame_indices(81, 16.0).numel() == 10  # Wan: 81 frames at 16 fps, 2 per second


def test_smart_resize():
    assert smart_resize(480, 480) == (448, 448)
    assert smart_resize(400, 640) == (336, 560)
    assert smart_resize(56, 56) == (336, 336)  # scaled up to the minimum area of 128 patches of 28²
    h, w = smart_resize(480, 832)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 448 * 448


def test_patchify_orders_patches_as_qwen():
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 56, 84) * 255  # 3 frames: padded to 4 with the last
    patches, grid = patchify(frames)
    assert grid.tolist() == [2, 4, 6] and patches.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    x = (frames / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = torch.cat([x, x[-1:]])
    row = 0
    for t in range(2):
        for bh in range(2):  # 2×2 merge blocks of 14-pixel patches, each block's four patches in a row
            for bw in range(3):
                for mh in range(2):
                    for mw in range(2):
                        h0, w0 = (2 * bh + mh) * 14, (2 * bw + mw) * 14
                        want = x[2 * t : 2 * t + 2, :, h0 : h0 + 14, w0 : w0 + 14].permute(1, 0, 2, 3).reshape(-1)
                        torch.testing.assert_close(patches[row], want)
                        row += 1


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_videoalign(tmp_path_factory.mktemp("videoalign"))


make = make_videoalign


def reference(reward, peft, rm_head, clip, prompt, positions=None):
    """The unmerged peft model's forward, scattered and read out by hand."""
    patches, grid = reward.prepare(clip)
    ids = reward.prompt_ids(prompt, "<|video_pad|>", int(grid.prod()) // 4)
    inner = peft.base_model.model.model
    embeds = inner.language_model.embed_tokens(ids[None])
    vision = inner.visual(patches, grid_thw=grid[None]).pooler_output
    embeds = embeds.masked_scatter((ids[None] == reward.config.video_token_id)[..., None].expand_as(embeds), vision)
    hidden = inner.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids[None]),
                                  position_ids=positions).last_hidden_state[0]
    return ids, hidden, torch.stack([hidden[(ids == t).nonzero()[-1, 0]] @ rm_head[0] for t in reward.special_ids])


def test_merged_checkpoint_matches_the_unmerged_peft_forward(files):
    root, peft, rm_head = files
    reward = make(root, normalize=False)
    clip = video(0)
    with torch.no_grad():
        ids, hidden, want = reference(reward, peft, rm_head, clip, "a dog runs")
        # no position ids means plain 1-D positions in all three M-RoPE sections
        arange = torch.arange(ids.numel()).view(1, 1, -1).expand(3, 1, -1)
        _, explicit, _ = reference(reward, peft, rm_head, clip, "a dog runs", positions=arange)
    torch.testing.assert_close(hidden, explicit)
    torch.testing.assert_close(reward.raw_scores(clip, "a dog runs"), want, rtol=1e-4, atol=1e-5)


def test_each_score_is_read_at_its_own_token(files, tmp_path):
    root, peft, rm_head = files
    shuffled = tmp_path / "t.txt"  # TA first in the text: the scores still come out as (VQ, MQ, TA)
    shuffled.write_text("{text_prompt} <|TA_reward|> then <|MQ_reward|> then <|VQ_reward|>")
    reward = VideoAlignReward(path=str(root / "model.pth"), base=str(root / "base"), template_file=str(shuffled),
                              lora_rank=4, lora_alpha=8.0, fps=16.0, precision="fp32", device="cpu", normalize=False)
    with torch.no_grad():
        ids, hidden, _ = reference(reward, peft, rm_head, video(1), "a cat")
    vq, mq, ta = (hidden[(ids == reward.special_ids[i]).nonzero()[-1, 0]] @ rm_head[0] for i in range(3))
    assert (ids == reward.special_ids[2]).nonzero()[0, 0] < (ids == reward.special_ids[0]).nonzero()[0, 0]
    torch.testing.assert_close(reward.raw_scores(video(1), "a cat"), torch.stack([vq, mq, ta]), rtol=1e-4, atol=1e-5)


def test_normalisation_and_the_contract(files):
    from grpo.testing import check_reward

    root, _, _ = files
    raw = make(root, normalize=False)
    clips = torch.stack([video(i) for i in range(3)])
    prompts = ["a dog", "two cats play", "rain"]
    r = raw.score(clips, prompts).components
    out = make(root, dimension="overall").score(clips, prompts)
    torch.testing.assert_close(out.components["VQ"], (r["VQ"] - 3.6757) / 2.2476)
    torch.testing.assert_close(out.components["MQ"], (r["MQ"] - 1.1646) / 1.3811)
    torch.testing.assert_close(out.scores, out.components["VQ"] + out.components["MQ"] + out.components["TA"])
    check_reward(make(root), clips, prompts, atol=1e-4)


def test_bad_files(files, tmp_path):
    root, _, _ = files
    (tmp_path / "plain.txt").write_text("no placeholder here")
    with pytest.raises(UserError) as e:
        VideoAlignReward(path=str(root / "model.pth"), base=str(root / "base"), template_file=str(tmp_path / "plain.txt"))
    assert e.value.where == "reward.template_file"
    with pytest.raises(UserError) as e:
        VideoAlignReward(path="", base=str(root / "base"), template_file=str(root / "template.txt"))
    assert e.value.where == "reward.path" and "VIDEOALIGN_PATH" in e.value.hint


def test_a_branchgrpo_iteration_of_wan_scored_by_videoalign(files, tmp_path):
    from grpo.core.engine import Trainer
    from grpo.core.recipe import parse
    from grpo.core.registry import load_registry
    from grpo.core.runlog import read_metrics
    from grpo.testing.tiny_diffusers import tiny_wan

    root, _, _ = files
    (tmp_path / "prompts.txt").write_text("a dog runs\na red car turns\n")
    data = {
        "model": {"use": "wan-t2v", "path": str(tiny_wan(tmp_path / "wan")), "height": 32, "width": 32, "frames": 5,
                  "fps": 8, "precision": "fp32", "device": "cpu", "max_sequence_length": 16, "guidance_scale": 1.0},
        "strategy": {"use": "branchgrpo", "split_points": [0, 2], "branch_factor": 2},
        "sampler": {"use": "dance-sde", "steps": 4},
        "reward": [{"use": "videoalign", "path": str(root / "model.pth"), "base": str(root / "base"),
                    "template_file": str(root / "template.txt"), "lora_rank": 4, "lora_alpha": 8.0,
                    "precision": "fp32", "device": "cpu"}],
        "prompts": {"use": "file", "path": str(tmp_path / "prompts.txt"), "eval_count": 1},
        "train": {"iterations": 1, "prompts_per_iteration": 2, "micro_batch": 4, "rollout_batch": 8},
        "eval": {"every": 1, "grid_images": 1},
        "backend": {"use": "torch", "device": "cpu"},
    }
    trainer = Trainer(parse(data, load_registry([])), tmp_path / "run")
    trainer.run()
    assert trainer.c.rewards.models[0].fps == 8  # told the model's fps
    train = next(r for r in read_metrics(tmp_path / "run") if r["kind"] == "train")
    assert train["cost/leaves"] == 8 and train["update/grad_norm"] > 0
    assert {"reward/videoalign/VQ/mean", "reward/videoalign/TA/mean"} <= set(train)
