"""The built-in plugins, registered through the same hooks as third-party ones."""

from __future__ import annotations

from grpo.core.hookspecs import hookimpl


@hookimpl
def grpo_register_model(registry) -> None:
    from .diffusion.models import FluxPolicy, SD3Policy, WanPolicy
    from .shapes.policy import ShapesPolicy

    registry.add("shapes", ShapesPolicy)
    registry.add("flux", FluxPolicy)
    registry.add("sd3", SD3Policy)
    registry.add("wan-t2v", WanPolicy)


@hookimpl
def grpo_register_sampler(registry) -> None:
    from .samplers.flow import CPS, ODE, DanceSDE, FlowSDE

    registry.add("dance-sde", DanceSDE)
    registry.add("flow-sde", FlowSDE)
    registry.add("cps", CPS)
    registry.add("ode", ODE)


@hookimpl
def grpo_register_solver(registry) -> None:
    from .solvers.solvers import DPMSolverPP, Euler

    registry.add("euler", Euler)
    registry.add("dpm-solver++", DPMSolverPP)


@hookimpl
def grpo_register_topology(registry) -> None:
    from .branchgrpo.topology import Branching
    from .trees.topologies import Chains, Fan
    from .trees.window import SDEWindow

    registry.add("fan", Fan)
    registry.add("chains", Chains)
    registry.add("sde-window", SDEWindow)
    registry.add("branching", Branching)


@hookimpl
def grpo_register_reward(registry) -> None:
    from .rewards.clip import AestheticReward, ClipScoreReward, HPSv2Reward, PickScoreReward
    from .rewards.hpsv3 import HPSv3Reward
    from .rewards.http import HttpReward
    from .rewards.imagereward import ImageRewardReward
    from .rewards.videoalign import VideoAlignReward
    from .shapes.rewards import JpegCompressibility, ShapesFaithfulness

    registry.add("shapes-faithfulness", ShapesFaithfulness)
    registry.add("jpeg-compressibility", JpegCompressibility)
    registry.add("hpsv2", HPSv2Reward)
    registry.add("pickscore", PickScoreReward)
    registry.add("clip-score", ClipScoreReward)
    registry.add("aesthetic", AestheticReward)
    registry.add("http", HttpReward)
    registry.add("videoalign", VideoAlignReward)
    registry.add("imagereward", ImageRewardReward)
    registry.add("hpsv3", HPSv3Reward)


@hookimpl
def grpo_register_advantage(registry) -> None:
    from .branchgrpo.advantage import DepthWiseAdvantage
    from .dancegrpo.advantage import GroupAdvantage

    registry.add("group", GroupAdvantage)
    registry.add("depth-wise", DepthWiseAdvantage)


@hookimpl
def grpo_register_pruner(registry) -> None:
    from .branchgrpo.pruners import DepthPruner, LastStepPruner, WidthPruner
    from .dancegrpo.pruners import BestOfN, TimestepFraction

    registry.add("timestep-fraction", TimestepFraction)
    registry.add("best-of-n", BestOfN)
    registry.add("depth", DepthPruner)
    registry.add("width", WidthPruner)
    registry.add("last-step", LastStepPruner)


@hookimpl
def grpo_register_objective(registry) -> None:
    from .objectives.awm import AWM
    from .objectives.clipped_ratio import ClippedRatio
    from .objectives.dgpo import DGPO
    from .objectives.forward import DiffusionNFT

    registry.add("clipped-ratio", ClippedRatio)
    registry.add("diffusionnft", DiffusionNFT)
    registry.add("awm", AWM)
    registry.add("dgpo", DGPO)


@hookimpl
def grpo_register_backend(registry) -> None:
    from .backends.deepspeed_backend import DeepSpeedBackend
    from .backends.plain import TorchBackend

    registry.add("torch", TorchBackend)
    registry.add("deepspeed", DeepSpeedBackend)


@hookimpl
def grpo_register_strategy(registry) -> None:
    from .awm.strategy import AWM
    from .branchgrpo.strategy import BRANCHGRPO, BRANCHGRPO_MIX
    from .dancegrpo.strategy import DANCEGRPO
    from .dgpo.strategy import DGPO
    from .diffusionnft.strategy import DIFFUSIONNFT
    from .flowgrpo.strategy import FLOWGRPO, FLOWGRPO_FAST
    from .mixgrpo.strategy import MIXGRPO, MIXGRPO_FLASH

    registry.add("dancegrpo", DANCEGRPO)
    registry.add("flow-grpo", FLOWGRPO)
    registry.add("flow-grpo-fast", FLOWGRPO_FAST)
    registry.add("mixgrpo", MIXGRPO)
    registry.add("mixgrpo-flash", MIXGRPO_FLASH)
    registry.add("branchgrpo", BRANCHGRPO)
    registry.add("branchgrpo-mix", BRANCHGRPO_MIX)
    registry.add("diffusionnft", DIFFUSIONNFT)
    registry.add("awm", AWM)
    registry.add("dgpo", DGPO)


@hookimpl
def grpo_register_prompts(registry) -> None:
    from .prompts.files import FilePrompts
    from .shapes.prompts import ShapesPrompts

    registry.add("shapes", ShapesPrompts)
    registry.add("file", FilePrompts)
