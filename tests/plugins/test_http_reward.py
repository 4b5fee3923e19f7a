"""The http reward against a stub OpenAI-compatible server on loopback: ratings parsed, retries,
timeouts and unreadable answers masked (NaN, counted), and a training run that leaves failed
samples out of the update."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_rewards import Judge, serve

from grpo.core.errors import UserError
from grpo.plugins.rewards.http import HttpReward
from grpo.testing import tiny_images


@pytest.fixture(scope="module")
def server():
    with serve() as url:
        yield url


def test_ratings_retries_and_failures(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    reward = HttpReward(url=server, api_key_env="JUDGE_KEY", timeout=0.5, timeout_step=0.0, retries=1,
                        image_size=16)
    images = torch.zeros(5, 3, 8, 8)
    out = reward.score(images, ["a good dog", "a bad cat", "a flaky fox", "a slow snail", "a plain field"])
    scores, failed = out.scores, out.components["failed"]
    assert scores[0] == pytest.approx(0.8) and scores[2] == pytest.approx(0.6) and scores[4] == pytest.approx(0.2)
    assert math.isnan(scores[1]) and math.isnan(scores[3])  # unreadable answer, timed out twice: not scored
    assert failed.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert Judge.calls["a flaky fox"] == 2 and Judge.calls["a slow snail"] == 2
    assert any("no rating" in e for e in reward.errors) and any("timed out" in e.lower() for e in reward.errors)
    request = Judge.seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sekret"
    assert request["body"]["temperature"] == 0.0 and request["body"]["model"] == "UnifiedReward"


def test_scores_follow_the_image_and_do_not_depend_on_the_batch(server):
    from grpo.testing import check_reward

    images, prompts = tiny_images(6)
    reward = HttpReward(url=server, image_size=0, concurrency=3)
    check_reward(reward, images, prompts, atol=1e-4)
    red = HttpReward(url=server, image_size=0).score(torch.ones(1, 3, 4, 4) * torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1),
                                                      ["a red square"]).scores
    assert red.tolist() == pytest.approx([1.0])


def test_bad_settings():
    with pytest.raises(UserError) as e:
        HttpReward(url="localhost:17140")
    assert e.value.where == "reward.url"
    with pytest.raises(UserError) as e:
        HttpReward(url="http://localhost:1", api_key_env="GRPO_TEST_NO_SUCH_KEY")
    assert e.value.where == "reward.api_key_env" and "GRPO_TEST_NO_SUCH_KEY" in e.value.hint


def test_failed_samples_are_left_out_of_training(server, tmp_path):
    """Half the prompts get no rating: the run completes, counts them and trains only scored chains."""
    from grpo.testing import run_tiny_recipe

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a good circle\na bad square\n")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "shapes_dance.toml"
    records = run_tiny_recipe(recipe, tmp_path / "run", [
        f"reward=[{{use='http', url='{server}', image_size=0}}]",
        f"prompts={{use='file', path='{prompts}', eval_count=1}}",
        "strategy.group_size=3", "strategy.timestep_fraction=1.0", "strategy.step_window=[]", "strategy.kl_beta=0",
    ])
    train = next(r for r in records if r["kind"] == "train")
    assert train["reward/failed"] == 3  # the three chains of 'a bad square'
    assert train["cost/trained_edges"] == 3 * 4  # only the scored tree's three chains, 4 steps each
    assert train["reward/http/mean"] == pytest.approx(0.8)


def test_a_redirect_to_another_host_is_not_followed_and_the_key_stays_home(server, monkeypatch):
    """The judge answers 302 to a second server (another origin), which must never see the request."""
    from tiny_rewards import Judge

    monkeypatch.setenv("JUDGE_KEY", "sekret")
    with serve() as other:
        monkeypatch.setattr(Judge, "elsewhere", other)
        reward = HttpReward(url=server, api_key_env="JUDGE_KEY", retries=0, image_size=16)
        out = reward.score(torch.zeros(1, 3, 8, 8), ["a moved cat"])
        assert math.isnan(out.scores[0]) and out.components["failed"].tolist() == [1.0]
        assert "redirected (302)" in reward.errors[0] and "not followed" in reward.errors[0]
        assert [s["path"] for s in Judge.seen] == ["/v1/chat/completions"]  # the first request only, no second


def test_the_timeout_is_a_deadline_for_the_whole_request(server):
    """An answer of about 60 bytes at one byte per 50 ms takes 3 s; every read returns within the
    timeout, so only a deadline on the whole request ends it at 0.5 s."""
    import time

    reward = HttpReward(url=server, timeout=0.5, timeout_step=0.0, retries=0, image_size=16)
    start = time.monotonic()
    out = reward.score(torch.zeros(1, 3, 8, 8), ["a trickle of words"])
    assert time.monotonic() - start < 1.5
    assert math.isnan(out.scores[0]) and "timed out" in reward.errors[0] and "0.5 s" in reward.errors[0]


def test_the_answer_size_is_bounded(server):
    reward = HttpReward(url=server, retries=0, image_size=16, max_answer_bytes=2**16)
    out = reward.score(torch.zeros(1, 3, 8, 8), ["a flood of words"])
    assert math.isnan(out.scores[0]) and "longer than max_answer_bytes = 65536" in reward.errors[0]
