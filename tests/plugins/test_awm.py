"""AWM: the loss against the released formula (scxue/advantage_weighted_matching, scripts/train_sd3_awm.py:
``compute_log_prob_awm`` and the training loop's lines from ``advantages = torch.clamp`` to ``loss =
policy_loss + ...``) written out again below on separate models; the noise-level draws against their
strata in closed form; the EMA's schedule; a run of the engine that keeps the leaves only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from support import TwoCopies, gradient_gap, leaves_only_rollout, shapes_iteration_overrides, tree_generators

from grpo.core.objective import Keep, LossContext, UnitContext
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.objectives.awm import AWM, awm_levels
from grpo.plugins.objectives.forward import unit_noise
from grpo.testing import tiny_policy

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def generators(n: int) -> list[torch.Generator]:
    return tree_generators(n, 3)


@pytest.fixture(scope="module")
def leaves_rollout():
    """Two prompts of three independent chains over 6 deterministic steps, keeping only the leaves."""
    return leaves_only_rollout(3, 6)


def released_log_prob(model, x0, noise, t, cond, weighting, ghuber_power):
    """``compute_log_prob_awm`` without CFG: the prediction in fp64, its squared error to ε − x0, the weighting."""
    noised_latents = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    model_output = model.velocity(noised_latents, t, cond).double()
    std_dev_t = torch.sqrt(t / (1 - torch.clamp(t, 0, 0.99))) * 0.7
    log_prob = -(model_output - (noise.double() - x0.double())) ** 2
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    if weighting == "t":
        log_prob = log_prob * t.view(-1)
    elif weighting == "t**2":
        log_prob = log_prob * t.view(-1) ** 2
    elif weighting == "huber":
        log_prob = -(torch.sqrt(-log_prob + 1e-10) - 1e-5) * t.view(-1)
    elif weighting == "ghuber":
        log_prob = -(torch.pow(-log_prob + 1e-10, ghuber_power)
                     - torch.pow(torch.tensor(1e-10, dtype=log_prob.dtype), ghuber_power)) * t.view(-1) / ghuber_power
    return log_prob, model_output, std_dev_t


def released_loss(theta, ema, ref, x0, noise, t, cond, advantages, o):
    """The training loop's loss with ``loss_type = 'exp_first'`` on separate models (θ with gradients)."""
    log_prob, model_output, std_dev_t = released_log_prob(theta, x0, noise, t, cond, o["weighting"], o["p"])
    with torch.no_grad():
        _, model_output_ref, _ = released_log_prob(ref, x0, noise, t, cond, o["weighting"], o["p"])
        old_log_prob, model_output_ema, _ = released_log_prob(ema, x0, noise, t, cond, o["weighting"], o["p"])
    if not o["off_policy"]:
        old_log_prob = log_prob.detach()
    advantages = torch.clamp(advantages, -o["adv_clip"], o["adv_clip"]) / o["adv_clip"] * o["advantage_max"]
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - o["clip_range"], 1.0 + o["clip_range"])
    policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    std = std_dev_t.view(-1, 1, 1, 1)
    if o["elbo"]:
        kl_loss = ((model_output - model_output_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std**2)
        ema_kl_loss = ((model_output - model_output_ema) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std**2)
    else:
        kl_loss = ((model_output - model_output_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        ema_kl_loss = ((model_output - model_output_ema) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    loss = policy_loss + o["beta"] * kl_loss.mean() + o["ema_beta"] * ema_kl_loss.mean()
    return loss, torch.mean((torch.abs(ratio - 1.0) > o["clip_range"]).float())


CASES = {
    "released": dict(weighting="ghuber", p=0.25, off_policy=False, clip_range=1.0, elbo=False),
    "off-policy-clipped": dict(weighting="ghuber", p=0.5, off_policy=True, clip_range=2e-4, elbo=True),
    "huber": dict(weighting="huber", p=0.25, off_policy=True, clip_range=0.5, elbo=False),
    "t": dict(weighting="t", p=0.25, off_policy=False, clip_range=1.0, elbo=True),
    "t**2": dict(weighting="t**2", p=0.25, off_policy=True, clip_range=1.0, elbo=False),
    "uniform": dict(weighting="Uniform", p=0.25, off_policy=True, clip_range=1e-3, elbo=False),
}
NAMES = {"ghuber": "ghuber", "huber": "huber", "t": "t", "t**2": "t2", "Uniform": "uniform"}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_loss_and_its_gradient_are_the_released_formula(leaves_rollout, case):
    """θ, the EMA and the base policy are three perturbed models; advantages reach past the clip. The mean
    of the units' losses, the clipped share and the gradient equal the released lines on separate models
    (measured over the six cases: the loss to 1e-7 relative, the gradient to 4e-7 of its norm)."""
    ro, cond = leaves_rollout
    c = CASES[case]
    o = dict(c, adv_clip=2.0, advantage_max=0.5, beta=0.3, ema_beta=0.7)
    objective = AWM(train_timesteps=3, timestep_fraction=1.0, weighting=NAMES[c["weighting"]], ghuber_power=c["p"],
                    adv_clip=2.0, advantage_max=0.5, clip_range=c["clip_range"], kl_beta=0.3, ema_beta=0.7,
                    kl_weight="elbo" if c["elbo"] else "uniform", ema_kl_weight="elbo" if c["elbo"] else "uniform",
                    off_policy=c["off_policy"])
    advantage = torch.tensor([-3.0, -1.0, 0.5, 2.5, 0.0, 1.5])
    units = objective.units(ro, Advantages([torch.zeros(0)] * 5 + [advantage]), EdgeSet([]), UnitContext(0, generators(2)))
    assert len(units) == 6 * 3

    copies = TwoCopies(objective.lag)
    out = objective.loss(units, LossContext(copies.policy, None, ro, cond, copies.lagged.applied))
    assert out.finite.all() and out.loss.dtype == torch.float32
    out.loss.mean().backward()

    theta, ema, base = copies.separate()
    x0 = ro.final[units.leaf]
    noise = unit_noise(units.seed, tuple(x0.shape[1:]))
    loss, clipfrac = released_loss(theta, ema, base, x0, noise, units.sigma, cond.select(units.tree), units.advantage, o)
    loss.backward()
    assert out.loss.mean().item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-9)
    assert out.values["clipped"].mean().item() == pytest.approx(clipfrac.item())
    if c["clip_range"] < 1e-3:
        assert 0 < clipfrac < 1  # the clip is exercised
    assert gradient_gap(copies.gradient(), theta) < 1e-5


def test_a_leaf_without_a_score_costs_its_units_only(leaves_rollout):
    ro, cond = leaves_rollout
    objective = AWM(train_timesteps=2, ema_beta=0.0)
    advantage = torch.tensor([1.0, float("nan"), -1.0, 0.5, 0.0, 2.0])
    units = objective.units(ro, Advantages([torch.zeros(0)] * 5 + [advantage]), EdgeSet([]), UnitContext(0, generators(2)))
    policy = tiny_policy()
    policy.snapshot_reference()
    out = objective.loss(units, LossContext(policy, None, ro, cond))
    assert out.finite.tolist() == [leaf != 1 for leaf in units.leaf.tolist()]
    assert torch.isfinite(out.loss).all()


def strata(n: int) -> list[tuple[float, float]]:
    return [(i / n, (i + 1) / n) for i in range(n)]


def test_the_discrete_draws_take_one_level_in_each_stratum():
    """14 levels, fraction 0.9: the first 12 in 6 strata of two (``discrete``); from level 1, strata
    [1, 2) [2, 4) … [10, 12) (``discrete_wo_init``); level 0 and 5 strata of [1, 12) (``discrete_with_init``)."""
    grid = torch.linspace(1.0, 1.0 / 14, 14)  # any decreasing levels: the draws index them
    at = {float(v): i for i, v in enumerate(grid)}
    want = {"discrete": [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)],
            "discrete_wo_init": [(1, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)],
            "discrete_with_init": [(0, 1), (1, 3), (3, 5), (5, 7), (7, 9), (9, 12)]}
    for kind, bounds in want.items():
        draw, g, seen = awm_levels(kind, 6, 0.9, 3.0), torch.Generator().manual_seed(0), set()
        for _ in range(200):
            idx = [at[float(v)] for v in draw(grid, g)]
            assert all(lo <= i < hi for i, (lo, hi) in zip(idx, bounds, strict=True)), (kind, idx)
            seen.update(idx)
        assert seen == set(range(bounds[0][0], bounds[-1][1])), kind  # every level of every stratum is drawn


def unshift(t: torch.Tensor, shift: float) -> torch.Tensor:
    return t / (shift - (shift - 1.0) * t)


def test_the_continuous_draws_are_stratified_before_their_shift():
    """``uniform``: one value in each fifth of [0.2, 1]; ``logit_normal``: Φ(logit(t)) in each fifth of
    [0, 1]; both shifted by 3·t/(1 + 2t), in a random order."""
    g, orders = torch.Generator().manual_seed(1), set()
    for _ in range(100):
        u = unshift(awm_levels("uniform", 5, 0.9, 3.0)(torch.ones(10), g).double(), 3.0)
        q = sorted(((u - 0.2) / 0.8).tolist())
        assert all(lo - 1e-6 <= v < hi + 1e-6 for v, (lo, hi) in zip(q, strata(5), strict=True)), q
        ln = awm_levels("logit_normal", 5, 0.9, 3.0)(torch.ones(10), g).double()
        assert (ln >= 0.01).all()
        x = unshift(ln, 3.0)
        phi = 0.5 * (1 + torch.erf(torch.log(x / (1 - x)) / math.sqrt(2)))
        orders.add(tuple(torch.argsort(phi).tolist()))
        assert all(lo - 1e-5 <= v < hi + 1e-5 for v, (lo, hi) in zip(sorted(phi.tolist()), strata(5), strict=True))
    assert len(orders) > 10  # shuffled


def test_the_ema_follows_the_released_schedule():
    """``min(kl_ema_decay, 0.001·global_step)`` after each epoch ('linear', 0.3); 'constant' is a rate
    at least the cap; no EMA is kept when neither the KL to it nor the off-policy rollout reads it."""
    lag = AWM().lag
    assert lag.every == "iteration" and not lag.rollout
    for step in range(0, 1000, 13):
        assert lag.decay(step) == pytest.approx(min(0.3, 0.001 * step), abs=1e-12)
    constant = AWM(ema_decay_rate=0.5, ema_decay_max=0.5).lag
    assert [constant.decay(s) for s in (1, 2, 50)] == [0.5, 0.5, 0.5]
    assert AWM(ema_beta=0.0).lag is None and AWM(ema_beta=0.0, off_policy=True).lag.rollout


def test_a_shapes_awm_iteration_keeps_the_leaves_only_and_trains(tiny_model_dir, tmp_path):
    """One iteration of the shipped recipe on the tiny model: its rollout stores no trajectory, each leaf
    is trained at 6 levels, the EMA is saved with the checkpoint and, at the first iteration, is the base
    policy (its KL equals the one to the reference)."""
    import json

    from grpo.cli.common import load_recipe
    from grpo.core.components import build_parts
    from grpo.core.engine import Trainer

    recipe, _ = load_recipe(RECIPES / "shapes_awm.toml", shapes_iteration_overrides(tiny_model_dir), env=False)
    assert build_parts(recipe).keep == Keep()
    Trainer(recipe, tmp_path).run()
    row = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in x][0]
    assert row["update/trained_noised_leaves"] == 2 * 3 * 6
    assert row["update/kl"] == pytest.approx(row["update/ema_kl"]) and row["update/ratio_max"] == 1.0
    assert (tmp_path / "checkpoints" / "iter_000001" / "lagged.safetensors").is_file()
