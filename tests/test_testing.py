"""grpo.testing: the contract checks pass on every built-in component and catch broken ones."""

import pytest
import torch

from grpo.core.reward import RewardOutput
from grpo.core.tree import EdgeSet
from grpo.plugins.samplers.flow import DanceSDE
from grpo.testing import (
    check_advantage,
    check_pruner,
    check_reward,
    check_sampler,
    strategy_parts,
    tiny_rollout,
)


@pytest.fixture(scope="module")
def tree_rollout(tiny_model_dir):
    from grpo.testing import tiny_policy

    plan = strategy_parts("branchgrpo", split_points=[0, 2], branch_factor=2)["topology"].plan(4)
    return tiny_rollout(plan, policy=tiny_policy(tiny_model_dir))[0]


# -- broken components are caught --------------------------------------------------------------------
class BatchDependentReward:
    media = "image"

    def score(self, images, prompts):
        s = images.flatten(1).mean(1)
        return RewardOutput(s - s.mean())  # relative to the batch: breaks batch invariance


class Float64Reward:
    media = "image"

    def score(self, images, prompts):
        return RewardOutput(images.flatten(1).mean(1).double())


class AbsoluteAdvantage:
    def __call__(self, rollout, rewards):  # no baseline: equal rewards do not give zero
        return _leaf_values(rollout, rewards)


def _leaf_values(rollout, rewards):
    from grpo.core.tree import Advantages

    return Advantages([rollout.reduce_leaves(rewards.float(), k + 1) for k in range(rollout.steps)])


class MutatingPruner:
    def __call__(self, rollout, advantages, edges, ctx):
        advantages.values[0].mul_(2)  # changes the advantages: forbidden
        return EdgeSet([m.clone() for m in edges.masks])


class UnseededPruner:
    def __call__(self, rollout, advantages, edges, ctx):
        return EdgeSet([m & (torch.rand(m.shape) < 0.5) for m in edges.masks])  # global RNG, not ctx.generator


class AddingPruner:
    def __call__(self, rollout, advantages, edges, ctx):
        return EdgeSet([torch.ones_like(m) for m in edges.masks])


class BatchSensitiveSampler(DanceSDE):
    """Its std depends on the batch: re-evaluation in other micro-batches breaks ratio = 1."""

    def step(self, x, v, sigma, sigma_next):
        mean, std = super().step(x, v, sigma, sigma_next)
        return mean, std * (1 + 0.01 * x.shape[0])


@pytest.mark.parametrize("reward,message", [(BatchDependentReward(), "depends on the rest of the batch"),
                                            (Float64Reward(), "float32")])
def test_broken_rewards_fail(reward, message):
    with pytest.raises(AssertionError, match=message):
        check_reward(reward)


def test_advantage_without_baseline_fails(tree_rollout):
    with pytest.raises(AssertionError, match="equal rewards must give zero"):
        check_advantage(AbsoluteAdvantage(), tree_rollout)
    check_advantage(AbsoluteAdvantage(), tree_rollout, group_relative=False)


@pytest.mark.parametrize("pruner,message", [(MutatingPruner(), "must not modify the advantages"),
                                            (UnseededPruner(), "same generator seed"),
                                            (AddingPruner(), "not given")])
def test_broken_pruners_fail(pruner, message, tree_rollout):
    with pytest.raises(AssertionError, match=message):
        check_pruner(pruner, tree_rollout)


def test_batch_sensitive_sampler_fails():
    with pytest.raises(AssertionError, match="on-policy ratio"):
        check_sampler(BatchSensitiveSampler(steps=4, eta=0.5))


def test_shapes_policy_keeps_the_contract(tiny_model_dir):
    from grpo.plugins.shapes.policy import ShapesPolicy
    from grpo.testing import check_policy

    check_policy(ShapesPolicy(path=str(tiny_model_dir), device="cpu"))
    check_policy(ShapesPolicy(path=str(tiny_model_dir), device="cpu", lora_rank=2, guidance_scale=2.0))


@pytest.mark.parametrize("name", ["torch", "zero0", "zero1", "zero2", "zero3", "zero3-offload"])
def test_builtin_backends_keep_the_contract(name, tmp_path):
    """Every ZeRO stage trains, restores, and skips a non-finite step (fp32 ZeRO-3 needs our check)."""
    from grpo.plugins.backends.deepspeed_backend import DeepSpeedBackend
    from grpo.plugins.backends.plain import TorchBackend
    from grpo.testing import check_backend

    if name == "torch":
        make = lambda: TorchBackend(device="cpu")  # noqa: E731
    elif name == "zero3-offload":
        make = lambda: DeepSpeedBackend(preset="zero3-offload")  # noqa: E731
    else:
        make = lambda: DeepSpeedBackend(zero_stage=int(name[-1]))  # noqa: E731
    check_backend(make, tmp_path)


def test_deepspeed_backend_destroys_its_process_group_before_the_interpreter_exits():
    """A gloo group left to interpreter teardown can abort a finished rank; the group outlives close()
    (DeepSpeed keeps handles on it for a later backend in the process) and is gone by exit."""
    import os
    import subprocess
    import sys

    script = """
import atexit, torch
atexit.register(lambda: print("at exit:", torch.distributed.is_initialized()))  # runs after later handlers
from grpo.core.backend import OptimizerConfig
from grpo.plugins.backends.deepspeed_backend import DeepSpeedBackend
for _ in range(2):
    m = torch.nn.Linear(2, 1)
    b = DeepSpeedBackend(zero_stage=2)
    b.setup(m, list(m.parameters()), OptimizerConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                                                      grad_clip=1.0))
    b.backward(m(torch.ones(3, 2)).sum(), boundary=True)
    b.step()
    b.close()
    print("after close:", torch.distributed.is_initialized())
"""
    # a fresh single process, without the group variables that an in-process backend of an earlier test set
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                             "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x for x in done.stdout.splitlines() if x.startswith(("after close", "at exit"))]
    assert lines == ["after close: True", "after close: True", "at exit: False"]


def test_builtin_prompt_sources_keep_the_contract(tmp_path):
    from grpo.plugins.prompts.files import FilePrompts
    from grpo.plugins.shapes.prompts import ShapesPrompts
    from grpo.testing import check_prompts

    check_prompts(ShapesPrompts())
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    check_prompts(FilePrompts(path=str(tmp_path / "p.txt")))


class ForgetfulBackend:
    """Saves nothing: load() cannot restore."""

    def __init__(self):
        from grpo.plugins.backends.plain import TorchBackend

        self.inner = TorchBackend(device="cpu")

    def setup(self, module, parameters, optim):
        self.inner.setup(module, parameters, optim)

    def backward(self, loss, *, boundary):
        self.inner.backward(loss, boundary=boundary)

    def step(self):
        return self.inner.step()

    def save(self, directory):
        pass

    def load(self, directory):
        pass

    def close(self):
        pass


def test_backend_that_does_not_restore_fails(tmp_path):
    from grpo.testing import check_backend

    with pytest.raises(AssertionError, match="restore the saved weights"):
        check_backend(ForgetfulBackend, tmp_path)
