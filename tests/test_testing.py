"""grpo.testing: the contract checks catch broken components (that every built-in keeps its contract
is tests/plugins/test_builtins_keep_their_contracts.py, which walks the registry)."""

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


def test_the_shapes_policy_with_adapters_and_guidance_keeps_the_contract(tiny_model_dir):
    from grpo.plugins.shapes.policy import ShapesPolicy
    from grpo.testing import check_policy

    check_policy(ShapesPolicy(path=str(tiny_model_dir), device="cpu", lora_rank=2, guidance_scale=2.0))


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero3", "zero3-offload"])
def test_every_zero_stage_keeps_the_backend_contract(name, tmp_path):
    """Every ZeRO stage trains, restores, and skips a non-finite step (fp32 ZeRO-3 needs our check);
    the registry walk checks the default (stage 2) and the torch backend."""
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


# -- topologies, samplers, solvers and objectives that break their contracts --------------------------
class OneLeaf:
    def plan(self, steps, iteration=0):
        from grpo.core.tree import TreePlan

        return TreePlan((1,) * steps, (1.0,) * steps, (True,) * steps)


class LastStepSplit:
    def plan(self, steps, iteration=0):
        from grpo.core.tree import TreePlan

        return TreePlan((1,) * (steps - 1) + (2,), (1.0,) * steps, (True,) * steps)


@pytest.mark.parametrize("topology,message", [(OneLeaf(), "at least two leaves"), (LastStepSplit(), "splits at the last step")])
def test_broken_topologies_fail(topology, message):
    from grpo.testing import check_topology

    with pytest.raises(AssertionError, match=message):
        check_topology(topology)


class ScalarStdSampler(DanceSDE):
    """Its std has one value for the whole batch, where the contract asks for one per latent."""

    def step(self, x, v, sigma, sigma_next):
        mean, std = super().step(x, v, sigma, sigma_next)
        return mean, std.mean()


def test_a_sampler_whose_std_has_the_wrong_shape_fails_naming_the_contract():
    with pytest.raises(AssertionError, match=r"one std per latent, shape \(3,\)"):
        check_sampler(ScalarStdSampler(steps=4, eta=0.5))


class Overshoot:
    """Euler with 10% too long a step: not exact on a straight flow."""

    uses_previous = False

    def step(self, x, v, x0, sigma, sigma_next, previous):
        return x + 1.1 * (sigma_next - sigma).view(-1, 1, 1, 1) * v


def test_a_solver_that_leaves_a_straight_flow_fails():
    from grpo.testing import check_solver

    with pytest.raises(AssertionError, match="leaves a straight flow"):
        check_solver(Overshoot())


def _leaf_objective(**changes):
    """A leaf objective (MSE of the velocity at the leaves' clean samples), with `changes` breaking it."""
    from dataclasses import dataclass

    from grpo.core.objective import Keep, Metric, UnitLoss, Units

    @dataclass(kw_only=True)
    class Leaves(Units):
        leaf: torch.Tensor

    class LeafMSE:
        unit, keep, metrics = "samples", Keep(), {"loss": Metric("loss")}

        def units(self, rollout, advantages, edges, ctx):
            leaf = torch.arange(rollout.final.shape[0])
            if changes.get("unseeded"):
                leaf = leaf[torch.randperm(leaf.numel())]
            tree = rollout.tree[-1][leaf]
            minor = torch.zeros_like(leaf) if changes.get("shared_place") else leaf
            return Leaves(tree=tree, major=torch.zeros_like(leaf), minor=minor, chain=leaf, leaf=leaf)

        def loss(self, units, ctx):
            x0 = ctx.rollout.final[units.leaf]
            sigma = torch.full((len(units),), 0.5)
            v = ctx.policy.velocity(x0, sigma, ctx.cond.select(units.tree)).float()
            loss = (v**2).flatten(1).mean(1)
            if changes.get("batch_mean"):
                loss = loss - loss.mean()  # relative to the micro-batch
            if changes.get("detached"):
                loss = loss.detach()
            return UnitLoss(loss, torch.ones(len(units), dtype=torch.bool))

    return LeafMSE()


@pytest.mark.parametrize("change,message", [("unseeded", "same units"), ("batch_mean", "depends on the micro-batch"),
                                            ("detached", "gradient reaching the policy"),
                                            ("shared_place", r"share \(major, tree, minor\)")])
def test_broken_objectives_fail(change, message):
    from grpo.testing import check_objective

    check_objective(_leaf_objective())  # the unbroken one keeps the contract
    with pytest.raises(AssertionError, match=message):
        check_objective(_leaf_objective(**{change: True}))


def test_a_reward_of_the_wrong_shape_is_named_with_its_plugin(tmp_path):
    """The engine names the plugin and its distribution (it was a bare RuntimeError)."""
    from grpo.core.errors import PluginError
    from grpo.core.hookspecs import hookimpl
    from grpo.testing import run_tiny_recipe

    class OneScore:
        media = "image"

        def score(self, images, prompts):
            return RewardOutput(images.mean().reshape(1))

    @hookimpl
    def grpo_register_reward(registry):
        registry.add("one-score", OneScore)

    recipe = {"model": {"use": "shapes"}, "strategy": {"use": "dancegrpo", "group_size": 3},
              "reward": [{"use": "one-score"}], "prompts": {"use": "shapes"}}
    with pytest.raises(PluginError, match=r"reward 'one-score' from plugin .*local module.*shape \(1,\) for 6 images"):
        run_tiny_recipe(recipe, tmp_path / "run", ["eval.every=0"], plugins=[grpo_register_reward])
