"""HPSv3 on a tiny random Qwen2-VL: the released layout and head, the fixed image area, μ read at
<|Reward|> through the ranknet head, and the reward contract."""

from __future__ import annotations

import pytest
import torch
from tiny_rewards import make_hpsv3, write_hpsv3

from grpo.core.errors import UserError
from grpo.plugins.rewards.hpsv3 import HPSv3Reward
from grpo.testing import tiny_images


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_hpsv3(tmp_path_factory.mktemp("hpsv3"))


make = make_hpsv3


def test_mu_is_the_ranknet_head_at_the_reward_token(files):
    root, model, head = files
    reward = make(root)
    images, prompts = tiny_images(2)
    patches, grid = reward.prepare(images[0])
    assert grid.tolist() == [1, 4, 4] and patches.shape[0] == 16  # 56×56: 4 × 4 patches, exactly PIXELS
    ids = reward.prompt_ids(prompts[0], "<|image_pad|>", 4)
    model.eval()
    with torch.no_grad():
        inner = model.model
        embeds = inner.language_model.embed_tokens(ids[None])
        vision = inner.visual(patches, grid_thw=grid[None]).pooler_output
        embeds = embeds.masked_scatter((ids == reward.config.image_token_id)[None, :, None].expand_as(embeds), vision)
        positions = torch.arange(ids.numel()).view(1, 1, -1).expand(3, 1, -1)  # 1-D positions, written out
        hidden = inner.language_model(inputs_embeds=embeds, position_ids=positions).last_hidden_state[0]
        x = hidden[(ids == reward.special_ids[0]).nonzero()[-1, 0]]
        x = torch.relu(x @ head["rm_head.0.weight"].t() + head["rm_head.0.bias"])
        x = torch.relu(x @ head["rm_head.3.weight"].t() + head["rm_head.3.bias"])
        want = x @ head["rm_head.5.weight"].t() + head["rm_head.5.bias"]
    torch.testing.assert_close(reward.mu_sigma(images[0], prompts[0]), want, rtol=1e-4, atol=1e-5)
    out = make(root, scale=15.0).score(images[:1], prompts[:1])
    torch.testing.assert_close(out.scores, want[:1] / 15.0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.components["sigma"], want[1:], rtol=1e-4, atol=1e-5)


def test_contract_and_bad_files(files, tmp_path):
    from grpo.testing import check_reward

    root, _, _ = files
    images, prompts = tiny_images(4)
    check_reward(make(root), images, prompts, atol=1e-4)
    (tmp_path / "t.txt").write_text("no reward token: {text_prompt}")
    with pytest.raises(UserError) as e:
        HPSv3Reward(path=str(root / "HPSv3.safetensors"), base=str(root / "base"), template_file=str(tmp_path / "t.txt"))
    assert e.value.where == "reward.template_file" and "<|Reward|>" in e.value.message
