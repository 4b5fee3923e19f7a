"""DGPO: the loss against the released formula (Luo-Yihong/DGPO, scripts/train_sd3_dgpo.py:
``compute_group_dgpo_loss_allreduce`` and the training loop's lines from ``xt = ...`` to ``loss = dgpo_loss +
...``) written out again below on separate models, for one process (its all-reduce is then the identity);
the units; the EMA reference's schedule by hand; an iteration of the shipped recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import TwoCopies, gradient_gap, leaves_only_rollout, shapes_iteration_overrides, tree_generators

from grpo.core.ema import LaggedWeights
from grpo.core.objective import Keep, LossContext, UnitContext
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.objectives.dgpo import DGPO, NoisedGroups, noised_groups
from grpo.plugins.objectives.forward import unit_noise

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def generators(n: int) -> list[torch.Generator]:
    return tree_generators(n, 11)


@pytest.fixture(scope="module")
def leaves_rollout():
    """Two prompts of four independent chains over 6 deterministic steps, keeping only the leaves."""
    return leaves_only_rollout(4, 6)


def released_group_loss(model_v, ref_old_v, target_v, advantages, local_group_indices, num_groups, beta_dpo,
                        group_size, dsm_loss):
    """``compute_group_dgpo_loss_allreduce`` on one process."""
    batch_size = model_v.shape[0]
    with torch.no_grad():
        ref_dsm_loss = (target_v - ref_old_v).square().reshape(batch_size, -1).mean(dim=1)
    delta_diff = dsm_loss.detach() - ref_dsm_loss.detach()
    per_sample_term = advantages * beta_dpo * delta_diff / group_size
    local_group_sums = torch.zeros(num_groups, dtype=per_sample_term.dtype)
    local_group_sums.scatter_add_(0, local_group_indices, per_sample_term)
    global_group_sums = local_group_sums.clone().detach()
    group_weights = torch.sigmoid(global_group_sums)
    local_weights = group_weights[local_group_indices]
    return (local_weights.detach() * advantages * dsm_loss).mean()


def released_loss(theta, ema, base, x0, noise, t, cond, advantages, groups, o):
    """The training loop's lines, each sample at its own level (the release draws one level per micro-batch)."""
    sigmas_t = t.reshape(x0.shape[0], 1, 1, 1)
    xt = (1 - sigmas_t) * x0 + sigmas_t * noise
    target_v = noise - x0
    with torch.no_grad():
        ref_old_v = base.velocity(xt, t, cond)
        old_v = ema.velocity(xt, t, cond)
    model_v = theta.velocity(xt, t, cond)
    ref_dgpo_v = old_v if o["use_ema_ref"] else ref_old_v
    advantages = torch.clamp(advantages, -o["adv_clip"], o["adv_clip"])
    dsm_loss = 1 * (target_v - model_v).square().reshape(x0.shape[0], -1).mean(dim=1)
    old_dsm_loss = 1 * (target_v - old_v).square().reshape(x0.shape[0], -1).mean(dim=1)
    ratio = torch.exp(-dsm_loss + old_dsm_loss)
    should_clip = torch.where(advantages > 0, ratio > 1.0 + o["clip_range"], ratio < 1.0 - o["clip_range"])
    if o["clip_dsm"]:
        dsm_loss = torch.where(should_clip, dsm_loss.detach(), dsm_loss)
    dgpo_loss = released_group_loss(model_v, ref_dgpo_v, target_v, advantages, groups, int(groups.max()) + 1,
                                    o["beta_dpo"], o["group_size"], dsm_loss)
    kl_loss = 1 * (model_v - ref_old_v).square().reshape(x0.shape[0], -1).mean(dim=1)
    if o["clip_kl"]:
        kl_loss = torch.where(should_clip, kl_loss.detach(), kl_loss)
    use_old = o["clip_dsm"] or o["clip_kl"]  # the release computes the clip only then (and logs no share)
    return dgpo_loss + o["beta"] * torch.mean(kl_loss), should_clip.float().mean() if use_old else torch.tensor(0.0)


CASES = {
    "released": dict(use_ema_ref=True, clip_dsm=True, clip_kl=False, clip_range=1e-5, shared_noise=True),
    "clipped-kl": dict(use_ema_ref=True, clip_dsm=True, clip_kl=True, clip_range=2e-3, shared_noise=True),
    "base-reference": dict(use_ema_ref=False, clip_dsm=False, clip_kl=False, clip_range=1e-3, shared_noise=False),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_loss_and_its_gradient_are_the_released_formula(leaves_rollout, case):
    """θ, the EMA and the base policy are three perturbed models; advantages reach past the clip; β_dpo puts
    the group weights between 0.1 and 0.9. The mean of the units' losses, the clipped share and the
    gradient equal the released lines on separate models (measured: the loss to 5e-7 relative, the gradient
    to 6e-7 of its norm)."""
    ro, cond = leaves_rollout
    c = CASES[case]
    o = dict(c, adv_clip=2.0, beta_dpo=100.0, beta=0.3, group_size=4)
    objective = DGPO(beta_dpo=100.0, train_timesteps=3, trunc_steps=4, adv_clip=2.0, kl_beta=0.3,
                     ema_decay_rate=0.001, **c)
    advantage = torch.tensor([-3.0, -1.0, 0.5, 2.5, 0.0, 1.5, -0.7, -1.2])
    units = objective.units(ro, Advantages([torch.zeros(0)] * 5 + [advantage]), EdgeSet([]), UnitContext(0, generators(2)))
    assert len(units) == 2 * 3 and units.leaves.shape == (6, 4)

    copies = TwoCopies(objective.lag)
    out = objective.loss(units, LossContext(copies.policy, None, ro, cond, copies.lagged.applied))
    assert out.finite.all() and out.loss.dtype == torch.float32
    weight = out.values["weight"]
    assert (weight - 0.5).abs().max() > 0.2 and ((weight > 0.05) & (weight < 0.95)).all()  # exercised, not saturated
    out.loss.mean().backward()

    theta, ema, base = copies.separate()
    x0 = ro.final[units.leaves.reshape(-1)]
    noise = unit_noise(units.seed.reshape(-1), tuple(x0.shape[1:]))
    groups = torch.arange(len(units)).repeat_interleave(4)  # one released group per unit
    loss, clipfrac = released_loss(theta, ema, base, x0, noise, units.sigma.repeat_interleave(4),
                                   cond.select(units.tree.repeat_interleave(4)), units.advantage.reshape(-1), groups, o)
    loss.backward()
    assert out.loss.mean().item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-9)
    assert out.values["clipped"].mean().item() == pytest.approx(clipfrac.item())
    if c["clip_range"] == 2e-3:
        assert 0 < clipfrac < 1  # the clip is exercised
    assert gradient_gap(copies.gradient(), theta) < 1e-5


def test_each_group_is_trained_at_distinct_levels_with_its_noise_shared(leaves_rollout):
    ro, _ = leaves_rollout
    adv = torch.arange(8, dtype=torch.float32)
    advantages = Advantages([torch.zeros(0)] * 5 + [adv])
    units = noised_groups(ro, advantages, UnitContext(0, generators(2)), 3, 2, shared_noise=True)
    assert isinstance(units, NoisedGroups) and len(units) == 2 * 3
    grid = ro.sigmas[:3].tolist()  # levels 0 … 2 only
    for tree in range(2):
        mine = units.tree == tree
        assert sorted(units.sigma[mine].tolist(), reverse=True) == grid  # all three, each once
        assert units.major[mine].tolist() == [0, 1, 2] and (units.minor[mine] == 0).all()
        assert (units.chain[mine] == 4 * tree).all()
        assert (units.leaves[mine] == torch.arange(4 * tree, 4 * tree + 4)).all()
        assert (units.advantage[mine] == torch.arange(4 * tree, 4 * tree + 4).float()).all()
    assert (units.seed == units.seed[:, :1]).all() and units.seed[:, 0].unique().numel() == 6
    own = noised_groups(ro, advantages, UnitContext(0, generators(2)), 3, 2, shared_noise=False)
    assert own.seed.unique().numel() == 6 * 4
    more = noised_groups(ro, advantages, UnitContext(0, generators(2)), 9, 2, shared_noise=True)
    assert len(more) == 2 * 3  # no more levels than there are
    scored = torch.tensor([True] * 4 + [False] * 4)
    partial = noised_groups(ro, advantages, UnitContext(0, generators(2), scored), 3, 2, shared_noise=True)
    assert partial.valid().tolist() == [t == 0 for t in partial.tree.tolist()]


def test_the_ema_reference_follows_the_released_schedule_and_later_makes_the_rollout():
    """After optimizer step number g (0-based), ``ema ← ema + (1 − d)(θ − ema)`` with d = min(0.3, 0.001·g);
    the rollout samples with it once more than ``switch_ema_ref`` steps have been taken."""
    objective = DGPO(ema_decay_rate=0.1, ema_decay_max=0.25, switch_ema_ref=2)
    p = torch.nn.Parameter(torch.zeros(2))
    lagged = LaggedWeights([p], ["w"], objective.lag)
    expected = torch.zeros(2)
    for global_step in range(6):
        with torch.no_grad():
            p.add_(1.0)
        with lagged.sampling():  # the copy samples from the third step taken on, the weights before
            assert torch.equal(p.detach(), lagged.shadow[0]) == (global_step >= 3) and lagged.steps == global_step
        lagged.after_step()
        d = min(0.25, 0.1 * global_step)
        expected = expected + (1 - d) * (p.detach() - expected)
        assert torch.allclose(lagged.shadow[0], expected), global_step
        lagged.after_iteration()  # moves nothing: the schedule is per optimizer step
        assert torch.allclose(lagged.shadow[0], expected)
    assert DGPO(switch_ema_ref=2).lag.rollout_after == 3 and DGPO(switch_ema_ref=-1).lag.rollout_after == 0
    with lagged.sampling():
        assert torch.equal(p.detach(), lagged.shadow[0])


def test_a_shapes_dgpo_iteration_keeps_the_leaves_only_and_trains(tiny_model_dir, tmp_path):
    from grpo.cli.common import load_recipe
    from grpo.core.components import build_parts
    from grpo.core.engine import Trainer

    recipe, _ = load_recipe(RECIPES / "shapes_dgpo.toml", shapes_iteration_overrides(tiny_model_dir, micro_batch=2),
                            env=False)
    assert build_parts(recipe).keep == Keep()
    Trainer(recipe, tmp_path).run()
    row = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in x][0]
    assert row["update/trained_noised_groups"] == 2 * 4 and row["update/grad_norm"] > 0
    assert 0 < row["update/group_weight"] < 1
    assert (tmp_path / "checkpoints" / "iter_000001" / "lagged.safetensors").is_file()
