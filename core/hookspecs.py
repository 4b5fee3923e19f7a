"""The plugin hooks of grpo (pluggy). Each hook's docstring is its reference documentation.

A plugin is a module or object with functions named like these hooks, decorated with
``grpo.core.hookspecs.hookimpl``. Each hook receives a ``registry`` bound to one component kind and
calls ``registry.add(name, factory, description=...)`` once per component. ``factory`` is a class
(or function) with keyword-only, type-annotated parameters: they are the component's recipe keys.
Built-in components are registered through these same hooks.
"""

from __future__ import annotations

import pluggy

PROJECT = "grpo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def grpo_register_model(registry) -> None:
    """Register policies (model adapters), selected with ``[model] use = NAME``.

    A factory returns an object implementing ``grpo.core.policy.Policy``: it encodes prompts, predicts
    the velocity ``v(x, σ, cond)``, decodes latents to images in [0, 1], and exposes the trainable
    ``denoiser`` module. Example: ``registry.add("shapes", ShapesPolicy, description="...")``.
    """


@hookspec
def grpo_register_sampler(registry) -> None:
    """Register samplers, selected with ``[sampler] use = NAME``.

    A factory returns a ``grpo.core.sampler.Sampler``: the σ grid of ``steps`` steps and, for one
    step, the mean μ and standard deviation τ of the Gaussian over the next state.
    """


@hookspec
def grpo_register_solver(registry) -> None:
    """Register deterministic solvers (``grpo.core.solver.Solver``), chosen by name for a rollout's
    deterministic (ODE) steps with ``[strategy.solver] use = NAME`` and for evaluation with
    ``[eval] solver = NAME``.

    A solver advances latents from σ to σ' given the velocity, the predicted clean sample and, for a
    multistep method, the node's previous step. Example: ``registry.add("euler", Euler)``.
    """


@hookspec
def grpo_register_topology(registry) -> None:
    """Register rollout-tree topologies (``grpo.core.topology.TreeTopology``).

    A topology returns a static ``TreePlan`` for T steps: the branch factor and split-noise scale
    of every step and which steps are stochastic. Strategies choose one; recipes may override it
    with ``[strategy.topology] use = NAME``.
    """


@hookspec
def grpo_register_reward(registry) -> None:
    """Register reward models, used as ``[[reward]] use = NAME`` (one table per reward).

    A factory returns a ``grpo.core.reward.RewardModel``: ``score(images, prompts)`` on a batch of
    images in [0, 1] returns a ``RewardOutput`` with one score per image and optional components.
    """


@hookspec
def grpo_register_advantage(registry) -> None:
    """Register advantage estimators (``grpo.core.advantage.AdvantageEstimator``).

    An estimator turns a rollout forest and its leaf rewards into one advantage per edge
    (reward fusion lives here). Override a strategy's choice with ``[strategy.advantage]``.
    """


@hookspec
def grpo_register_pruner(registry) -> None:
    """Register pruners (``grpo.core.pruner.Pruner``).

    A pruner receives the rollout, the advantages, the current set of trained edges and a
    ``PruneContext`` (iteration, total iterations, seeded generator) and returns a narrower set. It
    never changes the rollout, the rewards or the advantages.
    """


@hookspec
def grpo_register_objective(registry) -> None:
    """Register objectives (``grpo.core.objective.Objective``), chosen with ``[strategy.objective]``.

    An objective is the learning rule: it says what the rollout must keep for it, builds its training
    units from the rollout, the advantages and the trained edges, and gives the loss of a
    micro-batch of units. The schedule around it (optimizer steps, accumulation, epochs, clipping,
    non-finite values, distributed reductions) is the engine's and the same for every objective.
    """


@hookspec
def grpo_register_backend(registry) -> None:
    """Register training backends (``grpo.core.backend.Backend``), selected with ``[backend] use``.

    A backend owns the optimizer: backward, optimizer step, gradient clipping, checkpoints, and
    the process group (rank and world size).
    """


@hookspec
def grpo_register_strategy(registry) -> None:
    """Register strategies, selected with ``[strategy] use``.

    A strategy is a ``grpo.core.strategy.Preset``: the parts of one algorithm (DanceGRPO,
    BranchGRPO, ...) as tables, each a registered part and the options the paper gives it, plus
    the sampler and ``[train]`` settings of the paper. It has no code and no options of its own; a
    recipe changes any part's options, or replaces the part. Example:
    ``registry.add("my-grpo", Preset(topology=Part("fan", group_size=8), ...))``.
    """


@hookspec
def grpo_register_prompts(registry) -> None:
    """Register prompt sources (``grpo.core.prompts.PromptSource``), selected with ``[prompts] use``.

    A source gives the training prompts and named evaluation prompt sets.
    """


KINDS = ("model", "sampler", "solver", "topology", "reward", "advantage", "pruner", "objective", "backend", "strategy",
         "prompts")
