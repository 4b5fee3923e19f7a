"""Flow-DPPO's trust region in the clipped-ratio objective, against the released function
(Tencent-Hunyuan/UniRL, ``unirl/algorithms/flowdppo.py``: ``_gaussian_kl_div`` and
``_flowdppo_kl_adv_loss``) written out again below."""

from __future__ import annotations

import pytest
import torch

from grpo.core.edges import EdgeUnits
from grpo.core.errors import UserError
from grpo.core.objective import LossContext
from grpo.core.tree import Advantages, EdgeSet
from grpo.plugins.objectives.clipped_ratio import ClippedRatio, dppo_losses
from grpo.plugins.samplers.flow import DanceSDE
from grpo.testing import tiny_rollout


def released(new_logp, old_logp, new_means, old_means, advantages, sigma_t, kl_mask_threshold):
    """The released loss per element and its masks (its metrics left out)."""
    log_diff = new_logp - old_logp
    ratio = torch.exp(log_diff)
    adv = advantages.detach()
    unclipped_loss = -adv * ratio
    kl_per_elem = (new_means - old_means) ** 2 / (2 * sigma_t**2)
    kl_per_sample = kl_per_elem.mean(dim=tuple(range(1, kl_per_elem.ndim)))  # one step per row here
    kl_mask = kl_per_sample < kl_mask_threshold
    pos_rm_mask = (~kl_mask) & (ratio > 1.0) & (adv > 0)
    neg_rm_mask = (~kl_mask) & (ratio < 1.0) & (adv < 0)
    rm_mask = pos_rm_mask | neg_rm_mask
    zero = torch.zeros((), dtype=unclipped_loss.dtype)
    return torch.where(~rm_mask, unclipped_loss, zero), rm_mask, kl_per_sample


def test_the_mask_and_loss_of_every_case_by_hand():
    """D below and above the threshold, r above and below 1, A of both signs: only the far edges whose
    ratio moves the advantage's way are dropped."""
    log_prob = torch.tensor([0.1, 0.1, -0.1, -0.1, 0.1, -0.1, 0.1, -0.1])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 2.0, -2.0])
    d = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    loss, ratio, finite, dropped = dppo_losses(log_prob, torch.zeros(8), adv, d, threshold=0.5)
    assert finite.all() and dropped.tolist() == [False, True, False, True, False, False, True, True]
    r = torch.exp(log_prob)
    assert torch.allclose(loss, torch.where(dropped, torch.zeros(8), -adv * r))


def test_the_objective_is_the_released_function_on_a_rollout(tmp_path):
    """A rollout of the tiny model, the policy then moved so that some edges' means move beyond the
    threshold: the objective's per-edge losses and dropped edges are the released ones."""
    sampler = DanceSDE(steps=4, eta=0.5)
    objective = ClippedRatio(trust_region="dppo", dppo_threshold=0.04)
    ro, cond, policy = tiny_rollout(sampler=sampler, keep=objective.keep)
    g = torch.Generator().manual_seed(0)
    adv = Advantages([torch.randn(s.shape[0], generator=g) for s in ro.states[1:]])
    units = objective.units(ro, adv, EdgeSet.all_stochastic(ro), None)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    out = objective.loss(units, LossContext(policy, sampler, ro, cond))
    from grpo.core.edges import reevaluate

    t = reevaluate(policy, sampler, ro, cond, units, "nominal")
    old_means = torch.stack([ro.means[k][c] for k, c in zip(units.step.tolist(), units.child.tolist(), strict=True)])
    sigma_t = t.std.detach().view(-1, 1, 1, 1)
    want, rm, kl = released(t.log_prob.detach(), units.old_log_prob, t.mean.detach(), old_means, units.advantage,
                            sigma_t, 0.04)
    assert 0 < int(rm.sum()) < len(units) and bool((kl < 0.04).any())  # both kinds of edge occur
    assert torch.equal(out.values["masked"].bool(), rm)
    assert torch.allclose(out.loss.detach(), want, rtol=1e-6, atol=1e-7)
    assert torch.allclose(out.values["kl_new_old"], kl, rtol=1e-6)
    assert isinstance(units, EdgeUnits)


def test_grpo_guard_and_dppo_are_refused_together():
    with pytest.raises(UserError, match="GRPO-Guard"):
        ClippedRatio(grpo_guard=True, trust_region="dppo")


def test_the_trust_regions_statistics_are_logged_only_where_computed():
    from grpo.plugins.objectives.clipped_ratio import ClippedRatio

    assert {"masked_fraction", "kl_new_old"} <= ClippedRatio(trust_region="dppo").metrics.keys()
    assert not {"masked_fraction", "kl_new_old"} & ClippedRatio().metrics.keys()


def test_an_edge_whose_kl_is_not_finite_costs_that_edge_as_under_the_clip():
    log_prob = torch.tensor([0.1, -0.2, 0.05], requires_grad=True)
    kl = torch.tensor([0.01, float("nan"), 0.02])
    adv = torch.tensor([1.0, -1.0, 0.5])
    loss, _, finite, _ = dppo_losses(log_prob, torch.zeros(3), adv, torch.zeros(3), 1.0, kl, 0.5)
    assert finite.tolist() == [True, False, True] and loss[1] == 0.0
    assert torch.allclose(loss[[0, 2]], -adv[[0, 2]] * torch.exp(log_prob[[0, 2]]) + 0.5 * kl[[0, 2]])
    loss.sum().backward()
    assert torch.isfinite(log_prob.grad).all() and log_prob.grad[1] == 0.0
