"""The example plugin's components keep grpo's contracts, and its recipe runs end to end."""

from pathlib import Path

import pytest
import torch
from grpo.core.registry import load_registry
from grpo.testing import check_advantage, check_pruner, check_reward, check_strategy, run_tiny_recipe

from grpo_example_plugin.advantages import RankAdvantage, centred_ranks
from grpo_example_plugin.pruners import TopAdvantage
from grpo_example_plugin.rewards import Colourfulness
from grpo_example_plugin.strategy import RANK_GRPO

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "shapes_rank.toml"


def test_components_keep_the_contracts():
    check_reward(Colourfulness())
    check_advantage(RankAdvantage())
    check_pruner(TopAdvantage(keep=0.5))
    check_strategy(RANK_GRPO, steps=4)


def test_colourfulness_of_known_images():
    grey = torch.full((1, 3, 8, 8), 0.5)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    scores = Colourfulness(scale=1.0).score(torch.cat([grey, red]), ["", ""]).scores
    # grey: no opponent-colour signal; pure red: rg = 255, yb = 127.5, no spread → 0.3·√(255² + 127.5²)
    assert scores[0] == 0.0 and scores[1] == pytest.approx(0.3 * (255**2 + 127.5**2) ** 0.5, rel=1e-5)


def test_centred_ranks_by_hand():
    # ranks of [3, 1, 2, 2]: 3 → 3, 1 → 0, the tied 2s → 1.5 each; centred: 1.5, -1.5, 0, 0; std √1.5
    out = centred_ranks(torch.tensor([3.0, 1.0, 2.0, 2.0]))
    torch.testing.assert_close(out, torch.tensor([1.5, -1.5, 0.0, 0.0]) / 1.5**0.5)


def test_discovered_through_the_entry_point():
    registry = load_registry()
    for kind, name in (("reward", "colourfulness"), ("advantage", "rank"), ("pruner", "top-advantage"),
                       ("strategy", "rank-grpo")):
        assert registry.get(kind, name).distribution == "grpo-example-plugin 0.1.0"


def test_recipe_runs(tmp_path):
    records = run_tiny_recipe(RECIPE, tmp_path / "run", ["strategy.group_size=3"])
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 1 and "reward/colourfulness/mean" in train[0]
    # timestep fraction 0.6 of 4 steps → 3 per chain, then the top half by |advantage| per step
    assert 0 < train[0]["cost/trained_edges"] <= 2 * 3 * 3
