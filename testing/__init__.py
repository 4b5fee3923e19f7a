"""Contract tests and tiny fixtures for plugin authors.

Run a component of yours through the checks its interface promises, on CPU, in seconds::

    from grpo.testing import check_reward, tiny_images

    def test_my_reward_keeps_the_contract():
        check_reward(MyReward(), *tiny_images())

Each ``check_*`` raises ``AssertionError`` with a message saying which promise was broken, and
returns nothing when the component keeps them all. The tiny fixtures (``tiny_model``,
``tiny_policy``, ``tiny_images``, ``tiny_rollout``), ``strategy_parts``, which builds the parts a
``[strategy]`` table runs, and ``run_tiny_recipe``, which runs a recipe end to end on the tiny model,
are documented in ``docs/plugins.md``.
"""

from .contracts import (
    check_advantage,
    check_backend,
    check_objective,
    check_policy,
    check_prompts,
    check_pruner,
    check_reward,
    check_sampler,
    check_solver,
    check_strategy,
    check_topology,
)
from .tiny import run_tiny_recipe, strategy_parts, tiny_images, tiny_model, tiny_policy, tiny_rollout

__all__ = [
    "check_advantage",
    "check_backend",
    "check_objective",
    "check_policy",
    "check_prompts",
    "check_pruner",
    "check_reward",
    "check_sampler",
    "check_solver",
    "check_strategy",
    "check_topology",
    "run_tiny_recipe",
    "strategy_parts",
    "tiny_images",
    "tiny_model",
    "tiny_policy",
    "tiny_rollout",
]
