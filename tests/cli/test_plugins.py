"""`grpo plugins show`: a strategy shows every part of its preset with every option and the value the
preset gives it; a part says which recipe table chooses it."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from grpo.cli.main import app


def show(name: str) -> str:
    result = CliRunner().invoke(app, ["plugins", "show", name], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def row(text: str, option: str) -> list[str]:
    """The cells of `option`'s row in a table of `text`."""
    line = next(x for x in text.splitlines() if re.match(rf"│ {option}\s+│", x))
    return [c.strip() for c in line.strip("│").split("│")]


def test_a_strategy_shows_each_part_with_every_option_and_the_presets_value():
    text = show("flow-grpo")
    order = [text.index(f"strategy.{slot}: {kind} {name}") for slot, kind, name in (
        ("topology", "topology", "chains"), ("advantage", "advantage", "group"),
        ("pruner.0", "pruner", "timestep-fraction"), ("objective", "objective", "clipped-ratio"),
        ("solver", "solver", "euler"))]
    assert order == sorted(order) and "sampler: sampler flow-sde" in text
    objective = text[text.index("strategy.objective:"):text.index("strategy.solver:")]
    assert row(objective, "kl_beta")[1:4] == ["float", "0.04", "0.0"]  # type, the preset's value, the part's default
    assert row(objective, "grpo_guard")[2] == ""  # an option the preset leaves at the part's default
    assert "[train] defaults: ema_decay = 0.9, ema_every = 8" in " ".join(text.split())
    assert "Every option is its part's" in text


def test_a_part_says_which_table_chooses_it():
    assert "(objective, from grpo (built-in); chosen in [strategy.objective])" in show("clipped-ratio")
    assert "chosen in [strategy.solver] or [eval] solver" in show("dpm-solver++")
    assert "no options" in show("euler")
    assert "strategy.pruner: none" in show("mixgrpo")
