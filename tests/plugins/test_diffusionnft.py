"""DiffusionNFT: the loss against the released formula (NVlabs/DiffusionNFT, scripts/train_nft_sd3.py, the
training loop's lines from ``advantages_clip`` to ``loss += config.train.beta * ...``) written out
again below on separate models, the optimality weight by hand, the units, the old policy in the
engine (rollout, loss, checkpoint), and the tree whose leaves differ by their split noise alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import TwoCopies, gradient_gap, leaves_only_rollout, shapes_iteration_overrides, tree_generators

from grpo.core.ema import LaggedWeights
from grpo.core.objective import Keep, Lag, LossContext, UnitContext
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.objectives.forward import DiffusionNFT, NoisedLeaves, noised_leaves, unit_noise
from grpo.testing import tiny_rollout

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def generators(n: int) -> list[torch.Generator]:
    return tree_generators(n, 7)


@pytest.fixture(scope="module")
def leaves_rollout():
    """Two prompts of three independent chains over 4 deterministic steps, keeping only the leaves."""
    return leaves_only_rollout(3, 4)


def released_loss(theta, old, ref, x0, noise, t, cond, advantage, *, beta, adv_clip, kl_beta):
    """The released lines, on three separate models (θ with gradients, the old and the base one)."""
    t_expanded = t.view(-1, *([1] * (len(x0.shape) - 1)))
    xt = (1 - t_expanded) * x0 + t_expanded * noise
    with torch.no_grad():
        old_prediction = old.velocity(xt, t, cond).detach()
        ref_forward_prediction = ref.velocity(xt, t, cond)
    forward_prediction = theta.velocity(xt, t, cond)
    advantages_clip = torch.clamp(advantage, -adv_clip, adv_clip)
    normalized_advantages_clip = (advantages_clip / adv_clip) / 2.0 + 0.5
    r = torch.clamp(normalized_advantages_clip, 0, 1)
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = (torch.abs(x0_prediction.double() - x0.double())
                         .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (torch.abs(negative_x0_prediction.double() - x0.double())
                                  .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    policy_loss = (ori_policy_loss * adv_clip).mean()
    kl_div_loss = ((forward_prediction - ref_forward_prediction) ** 2).mean(dim=tuple(range(1, x0.ndim)))
    return policy_loss + kl_beta * torch.mean(kl_div_loss), ori_policy_loss * adv_clip


def test_the_loss_and_its_gradient_are_the_released_formula(leaves_rollout):
    """β = 0.7 (so the old prediction enters both velocities), KL 0.1, advantages beyond the clip: the
    mean of the units' losses and its gradient equal the released loss on separate θ, old and base
    models (measured: 6e-8 relative on the loss, each unit's policy loss exactly, 3e-7 of the gradient's
    norm)."""
    ro, cond = leaves_rollout
    objective = DiffusionNFT(beta=0.7, adv_clip=2.0, kl_beta=0.1, timestep_fraction=0.5)
    advantage = torch.tensor([-3.0, -1.0, 0.5, 2.5, 0.0, 1.5])
    units = objective.units(ro, Advantages([torch.zeros(0)] * 3 + [advantage]), EdgeSet([]), UnitContext(0, generators(2)))
    assert len(units) == 6 * 2  # ⌊4 · 0.5⌋ noise levels per leaf

    copies = TwoCopies(Lag(0.001, 0.5))
    out = objective.loss(units, LossContext(copies.policy, None, ro, cond, copies.lagged.applied))
    assert out.finite.all() and out.loss.dtype == torch.float32
    out.loss.mean().backward()
    params = copies.policy.trainable_parameters()
    assert all(torch.equal(p.detach(), copies.theta[copies.names[id(p)]]) for p in params)  # the old weights were swapped back

    theta, old, ref = copies.separate()
    x0 = ro.final[units.leaf]
    noise = unit_noise(units.seed, tuple(x0.shape[1:]))
    loss, per_unit = released_loss(theta, old, ref, x0, noise, units.sigma, cond.select(units.tree), units.advantage,
                                   beta=0.7, adv_clip=2.0, kl_beta=0.1)
    loss.backward()
    assert out.loss.mean().item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(out.values["policy_loss"], per_unit.float(), rtol=1e-5)
    assert gradient_gap(copies.gradient(), theta) < 2e-6


def test_the_optimality_weight_of_each_advantage_mode():
    """r = clamp(a/C/2 + ½, 0, 1) of the clipped advantage a, C = 5, after each release's mode."""
    a = torch.tensor([-7.0, -5.0, -2.5, 0.0, 2.5, 5.0, 7.0])
    expected = {
        "all": [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0],
        "positive_only": [0.5, 0.5, 0.5, 0.5, 0.75, 1.0, 1.0],
        "negative_only": [0.0, 0.0, 0.25, 0.5, 0.5, 0.5, 0.5],
        "one_only": [0.5, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6],
        "binary": [0.4, 0.4, 0.4, 0.5, 0.6, 0.6, 0.6],
    }
    for mode, want in expected.items():
        got = DiffusionNFT(adv_clip=5.0, adv_mode=mode).optimality(a)
        assert torch.allclose(got, torch.tensor(want)), mode


def test_each_leaf_is_trained_at_distinct_noise_levels_of_the_rollout(leaves_rollout):
    ro, _ = leaves_rollout
    adv = torch.arange(6, dtype=torch.float32)
    advantages = Advantages([torch.zeros(0)] * 3 + [adv])
    units = noised_leaves(ro, advantages, UnitContext(0, generators(2)), 0.99)  # ⌊4 · 0.99⌋ = 3 of 4 levels
    assert isinstance(units, NoisedLeaves) and len(units) == 6 * 3
    grid = ro.sigmas[:-1].tolist()  # 1, 0.75, 0.5, 0.25: never the clean end
    for leaf in range(6):
        mine = units.leaf == leaf
        assert sorted(units.sigma[mine].tolist()) == sorted(set(units.sigma[mine].tolist()))
        assert set(units.sigma[mine].tolist()) <= set(grid)
        assert units.major[mine].tolist() == [0, 1, 2] and set(units.minor[mine].tolist()) == {leaf % 3}
        assert (units.chain[mine] == leaf).all() and (units.tree[mine] == leaf // 3).all()
        assert (units.advantage[mine] == float(leaf)).all()
    assert units.seed.unique().numel() == len(units)
    # a tree's units come from its own generator: the second tree's are the same without the first
    alone = noised_leaves(ro, advantages, UnitContext(0, generators(2)), 0.99)
    assert torch.equal(alone.sigma, units.sigma) and torch.equal(alone.seed, units.seed)
    swapped = noised_leaves(ro, advantages, UnitContext(0, generators(2)[::-1]), 0.99)
    assert torch.equal(swapped.seed[9:], units.seed[:9])
    # a leaf whose reward could not be scored trains nothing
    scored = torch.tensor([True, False, True, True, True, True])
    partial = noised_leaves(ro, advantages, UnitContext(0, generators(2), scored), 0.99)
    assert partial.valid().tolist() == [leaf != 1 for leaf in partial.leaf.tolist()]


def test_a_units_noise_is_its_seeds_whatever_the_batch():
    seeds = torch.tensor([5, 11, 5])
    both = unit_noise(seeds, (3, 4, 4))
    assert torch.equal(both[0], both[2]) and not torch.equal(both[0], both[1])
    assert torch.equal(unit_noise(seeds[1:2], (3, 4, 4))[0], both[1])
    assert torch.equal(both[1], torch.randn((3, 4, 4), generator=torch.Generator().manual_seed(11)))


def released_decay(step: int, decay_type: int) -> float:
    """``return_decay`` of the release."""
    flat, uprate, uphold = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[decay_type]
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


@pytest.mark.parametrize("decay_type,options", [(0, dict(old_decay_rate=0.0, old_decay_max=0.0)),
                                                (1, {}),
                                                (2, dict(old_decay_rate=0.0075, old_decay_max=0.999, old_decay_flat=75))])
def test_the_old_policys_decay_is_the_released_schedule(decay_type, options):
    lag = DiffusionNFT(**options).lag
    assert lag.every == "iteration" and lag.rollout
    for step in range(0, 1200, 7):
        assert lag.decay(step) == pytest.approx(released_decay(step, decay_type), abs=1e-12), step


def test_the_old_policy_follows_the_weights_after_each_iteration_and_makes_the_rollout():
    """Two iterations of three optimizer steps, against the blend written out by hand."""
    p = torch.nn.Parameter(torch.zeros(3))
    lagged = LaggedWeights([p], ["w"], Lag(rate=0.1, cap=0.5, rollout=True, rollout_after=4))
    expected = torch.zeros(3)
    for it in range(2):
        for _ in range(3):
            with torch.no_grad():
                p.add_(1.0)
            lagged.after_step()
        assert torch.equal(lagged.shadow[0], expected)  # unmoved within the iteration
        lagged.after_iteration()
        d = min(0.1 * 3 * (it + 1), 0.5)
        expected = d * expected + (1 - d) * p.detach()
        assert torch.allclose(lagged.shadow[0], expected)
    assert torch.allclose(expected, torch.full((3,), 0.5 * (0.7 * 3) + 0.5 * 6.0))
    with lagged.sampling():  # six steps taken, four needed: the rollout uses the old weights
        assert torch.equal(p.detach(), lagged.shadow[0])
    assert torch.equal(p.detach(), torch.full((3,), 6.0))


def run_nft(tiny_model_dir, out, iterations, extra=(), resume=False):
    from grpo.cli.common import load_recipe
    from grpo.core.engine import Trainer

    sets = [*shapes_iteration_overrides(tiny_model_dir, steps=4, iterations=iterations), "train.optimizer_steps=2",
            "train.lr=1e-3", *extra]
    recipe, _ = load_recipe(RECIPES / "shapes_nft.toml", sets, env=False)
    trainer = Trainer(recipe, out)
    return trainer, trainer.run(resume=resume)


def test_the_engine_rolls_out_with_the_old_policy_and_a_resumed_run_keeps_it(tiny_model_dir, tmp_path, monkeypatch):
    import grpo.core.engine as engine

    seen = []

    def recording(policy, *args, **kwargs):
        seen.append([p.detach().clone() for p in policy.trainable_parameters()])
        return rollout(policy, *args, **kwargs)

    rollout = engine.rollout
    monkeypatch.setattr(engine, "rollout", recording)
    trainer, _ = run_nft(tiny_model_dir, tmp_path / "straight", 2)
    lagged = trainer.copies.lagged
    assert lagged.steps == 4 and (tmp_path / "straight" / "checkpoints" / "iter_000002" / "lagged.safetensors").is_file()
    # iteration 1 sampled with the old weights after iteration 0 (d = 0.001·2), not the trained ones
    from grpo.core.ema import read

    old = read(tmp_path / "straight" / "checkpoints" / "iter_000001", "lagged.safetensors")
    names = lagged.names
    assert all(torch.equal(s, old[n].to(s.dtype)) for s, n in zip(seen[1], names, strict=True))
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "straight" / "checkpoints" / "iter_000001" / "trained.safetensors"))
    assert any(not torch.equal(s, trained[n]) for s, n in zip(seen[1], names, strict=True))
    # stopped after one iteration and resumed: the same second iteration
    run_nft(tiny_model_dir, tmp_path / "resumed", 1)
    run_nft(tiny_model_dir, tmp_path / "resumed", 2, resume=True)
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    pick = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))}  # noqa: E731
                       for r in rs if r["kind"] == "train"]
    assert pick(lines) == pick(again)


def test_the_tree_of_the_objective_on_the_leaves_draws_noise_at_its_splits_only():
    from grpo.cli.common import load_recipe
    from grpo.core.components import build_parts

    recipe, _ = load_recipe(RECIPES / "shapes_nft_tree.toml", ["sampler.steps=8", "strategy.topology.split_points=[0, 2]"], env=False)
    parts = build_parts(recipe)
    plan = parts.plan(8)
    assert plan.stochastic == (True, False, True, False, False, False, False, False)
    assert plan.branch == (2, 1, 2, 1, 1, 1, 1, 1) and plan.rollout_forwards == 1 + 2 + 2 + 4 * 5
    assert parts.keep == Keep()  # nothing but the leaves
    ro, _, _ = tiny_rollout(plan, sampler=parts.sampler, keep=parts.keep, solver=parts.solvers[""])
    stored = [*ro.states, *ro.means]
    assert all(s.numel() == 0 for s in stored) and all(torch.isnan(lp).all() for lp in ro.log_prob)
    assert ro.final.shape[0] == 2 * 4 and torch.isfinite(ro.final).all()
    # the four leaves of a tree differ, by the noise of their splits alone
    assert all((ro.final[i] - ro.final[j]).abs().max() > 1e-3 for i in range(4) for j in range(i))
