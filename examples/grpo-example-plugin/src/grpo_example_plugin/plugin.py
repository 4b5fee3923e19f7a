"""The hook implementations: grpo calls each once and the plugin registers its components."""

from grpo.core.hookspecs import hookimpl


@hookimpl
def grpo_register_reward(registry):
    from .rewards import Colourfulness

    registry.add("colourfulness", Colourfulness)


@hookimpl
def grpo_register_advantage(registry):
    from .advantages import RankAdvantage

    registry.add("rank", RankAdvantage)


@hookimpl
def grpo_register_pruner(registry):
    from .pruners import TopAdvantage

    registry.add("top-advantage", TopAdvantage)


@hookimpl
def grpo_register_strategy(registry):
    from .strategy import RANK_GRPO

    registry.add("rank-grpo", RANK_GRPO)
