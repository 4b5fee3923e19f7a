"""The built-in plugins, registered through the same hooks as third-party ones."""

from __future__ import annotations

from grpo.core.hookspecs import hookimpl


@hookimpl
def grpo_register_model(registry) -> None:
    from .shapes.policy import ShapesPolicy

    registry.add("shapes", ShapesPolicy)


@hookimpl
def grpo_register_sampler(registry) -> None:
    from .samplers.flow import ODE, DanceSDE, FlowSDE

    registry.add("dance-sde", DanceSDE)
    registry.add("flow-sde", FlowSDE)
    registry.add("ode", ODE)


@hookimpl
def grpo_register_topology(registry) -> None:
    from .trees.topologies import Fan

    registry.add("fan", Fan)


@hookimpl
def grpo_register_reward(registry) -> None:
    from .shapes.rewards import JpegCompressibility, ShapesFaithfulness

    registry.add("shapes-faithfulness", ShapesFaithfulness)
    registry.add("jpeg-compressibility", JpegCompressibility)


@hookimpl
def grpo_register_advantage(registry) -> None:
    from .dancegrpo.advantage import GroupAdvantage

    registry.add("group", GroupAdvantage)


@hookimpl
def grpo_register_pruner(registry) -> None:
    from .dancegrpo.pruners import TimestepFraction

    registry.add("timestep-fraction", TimestepFraction)


@hookimpl
def grpo_register_backend(registry) -> None:
    from .backends.deepspeed_backend import DeepSpeedBackend
    from .backends.plain import TorchBackend

    registry.add("torch", TorchBackend)
    registry.add("deepspeed", DeepSpeedBackend)


@hookimpl
def grpo_register_strategy(registry) -> None:
    from .dancegrpo.strategy import DanceGRPO

    registry.add("dancegrpo", DanceGRPO)


@hookimpl
def grpo_register_prompts(registry) -> None:
    from .prompts.files import FilePrompts
    from .shapes.prompts import ShapesPrompts

    registry.add("shapes", ShapesPrompts)
    registry.add("file", FilePrompts)
