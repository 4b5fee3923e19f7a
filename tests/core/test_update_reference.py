"""`update()` against a hand-written PPO-clip update: per optimizer step, the mean over its edges of
max(−A·r, −A·clip(r, 1 ± ε)), with r from torch's Gaussian density, one autograd pass, the norm clip
and torch's AdamW. Two optimizer steps, two epochs, and both accumulation units; and the reward
aggregation "advantage" against per-reward advantages computed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from support import clipped_update
from torch.distributions import Normal

from grpo.core.backend import OptimizerConfig
from grpo.core.config import RewardSpec
from grpo.core.edges import EdgeUnits
from grpo.core.registry import load_registry
from grpo.core.scoring import Rewards
from grpo.core.tree import Advantages, EdgeSet
from grpo.core.update import UpdateConfig
from grpo.plugins.backends.plain import TorchBackend
from grpo.plugins.samplers.flow import DanceSDE
from grpo.plugins.trees.topologies import Fan
from grpo.testing import tiny_rollout

# eps ≫ |g| makes AdamW's step ≈ lr·(its moment average of g): linear in the gradient, so rounding in
# near-zero gradients cannot be amplified into ±lr steps and the comparison can be tight
OPTIM = OptimizerConfig(lr=1.0, weight_decay=1e-4, betas=(0.9, 0.999), eps=1.0, grad_clip=0.05)
CLIP = 1e-3


@pytest.fixture(scope="module")
def setting():
    sampler = DanceSDE(steps=3, eta=0.6)
    ro, cond, policy = tiny_rollout(Fan(group_size=3).plan(3), sampler=sampler)
    gen = torch.Generator().manual_seed(5)
    adv = Advantages([torch.randn(ro.states[k + 1].shape[0], generator=gen) for k in range(ro.steps)])
    return sampler, ro, cond, policy, EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))


def hand_partition(batch: EdgeUnits, parts: int, unit: str, gen: torch.Generator) -> list[list[int]]:
    """Shuffle edges (or whole chains, each kept in step order) and split them into `parts` steps."""
    if unit == "edges":
        order = torch.randperm(len(batch), generator=gen).tolist()
        return [c.tolist() for c in torch.tensor_split(torch.tensor(order), parts)]
    chains = sorted(set(batch.chain.tolist()))
    shuffled = [chains[i] for i in torch.randperm(len(chains), generator=gen).tolist()]
    steps = []
    for group in torch.tensor_split(torch.tensor(shuffled), parts):
        steps.append([i for c in group.tolist() for i in sorted(
            (j for j in range(len(batch)) if batch.chain[j] == c), key=lambda j: int(batch.step[j]))])
    return steps


def hand_update(setting, parts: int, epochs: int, unit: str):
    sampler, ro, cond, base, batch = setting
    policy = copy.deepcopy(base)
    params = policy.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=OPTIM.lr, weight_decay=OPTIM.weight_decay, betas=OPTIM.betas, eps=OPTIM.eps)
    gen = torch.Generator().manual_seed(11)
    for _ in range(epochs):
        for members in hand_partition(batch, parts, unit, gen):
            losses = []
            for i in members:
                k, c = int(batch.step[i]), int(batch.child[i])
                x = ro.states[k][ro.parent[k][c]][None]
                x_next = ro.states[k + 1][c][None]
                sigma, sigma_next = ro.sigmas[k][None], ro.sigmas[k + 1][None]
                v = policy.velocity(x, sigma, cond.select(ro.tree[k + 1][c][None])).float()
                mean, std = sampler.step(x, v, sigma, sigma_next)
                log_prob = Normal(mean, std.view(-1, 1, 1, 1)).log_prob(x_next).mean()  # averaged over elements
                r = torch.exp(log_prob - batch.old_log_prob[i])
                a = batch.advantage[i]
                losses.append(torch.maximum(-a * r, -a * torch.clamp(r, 1 - CLIP, 1 + CLIP)))
            opt.zero_grad()
            torch.stack(losses).mean().backward()
            torch.nn.utils.clip_grad_norm_(params, OPTIM.grad_clip)
            opt.step()
    return [p.detach() for p in params]


def engine_update(setting, parts: int, epochs: int, unit: str):
    sampler, ro, cond, base, batch = setting
    policy = copy.deepcopy(base)
    params = policy.trainable_parameters()
    backend = TorchBackend(device="cpu")
    backend.setup(policy.denoiser, params, OPTIM)
    config = UpdateConfig(optimizer_steps=parts, epochs=epochs, micro_batch=2, accumulation_unit=unit)
    stats = clipped_update(policy, sampler, backend, ro, cond, batch, clip_range=CLIP, config=config,
                           generator=torch.Generator().manual_seed(11))
    return [p.detach() for p in params], stats


@pytest.mark.parametrize("parts,epochs,unit", [(2, 1, "edges"), (2, 2, "edges"), (3, 2, "chains"), (1, 1, "chains")])
def test_update_equals_a_hand_written_ppo_update(setting, parts, epochs, unit):
    want = hand_update(setting, parts, epochs, unit)
    got, stats = engine_update(setting, parts, epochs, unit)
    assert stats.optimizer_steps == parts * epochs and stats.skipped_steps == 0
    moved = max(float((w - b).abs().max()) for w, b in zip(want, setting[3].trainable_parameters(), strict=True))
    assert moved > 1e-3  # the updates did move the weights
    assert max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) < 1e-6  # fp32 rounding


def test_advantage_aggregation_is_the_weighted_sum_of_per_reward_advantages(setting):
    """reward_aggregation = "advantage": A = Σ_i w_i · (R_i − mean R_i) / (std R_i + 1e-8) per tree,
    computed here by hand, against "sum", which normalises the weighted sum once."""
    _, ro, _, _, _ = setting
    registry = load_registry()
    specs = [RewardSpec(registry.get("reward", "jpeg-compressibility"), {}, "reward.0", weight=w) for w in (2.0, 0.5)]
    gen = torch.Generator().manual_seed(2)
    scores = [torch.randn(ro.states[-1].shape[0], generator=gen), 10 * torch.rand(ro.states[-1].shape[0], generator=gen)]
    estimator = registry.get("advantage", "group").factory()
    entry = registry.get("advantage", "group")
    per = Rewards(specs, [None, None], "advantage").advantages(estimator, entry, ro, scores)
    summed = Rewards(specs, [None, None], "sum").advantages(estimator, entry, ro, scores)
    group = ro.plan.leaves

    def norm(r):
        r = r.reshape(-1, group)
        return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-8)).reshape(-1)

    torch.testing.assert_close(per.values[-1], 2.0 * norm(scores[0]) + 0.5 * norm(scores[1]))
    torch.testing.assert_close(summed.values[-1], norm(2.0 * scores[0] + 0.5 * scores[1]))
