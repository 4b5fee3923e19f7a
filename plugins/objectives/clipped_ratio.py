"""The clipped likelihood ratio (DanceGRPO, BranchGRPO, Flow-GRPO, MixGRPO): per trained edge
``max(−A·r, −A·clip(r, 1 ± ε))`` with r the ratio of the edge's transition density under the current
and the sampling policy, plus an optional KL penalty to the base policy; GRPO-Guard's re-centred
ratio as an option."""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from grpo.core.edges import EdgeUnits, reevaluate
from grpo.core.errors import UserError
from grpo.core.objective import Keep, LossContext, Metric, UnitContext, UnitLoss
from grpo.core.policy import Policy
from grpo.core.sampler import Sampler, block_mean
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout, TreePlan

MAX_LOG_RATIO = 80.0  # |log r| beyond this overflows fp32 once multiplied: the edge is left out
METRICS = {
    "loss": Metric("loss"),
    "ratio_mean": Metric("ratio", "mean", 1.0),
    "ratio_min": Metric("ratio", "min", 1.0),
    "ratio_max": Metric("ratio", "max", 1.0),
    "clip_fraction": Metric("clipped"),
    "approx_kl": Metric("approx_kl"),
    "kl": Metric("kl"),
}
DPPO_METRICS = {  # logged only where they are computed: with Flow-DPPO's trust region
    "masked_fraction": Metric("masked"),
    "kl_new_old": Metric("kl_new_old"),
}


def clipped_loss(ratio: torch.Tensor, advantage: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Per-edge ``max(−A·r, −A·clip(r, 1 − ε, 1 + ε))``."""
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped)


def edge_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor, kl: torch.Tensor | None,
                clip_range: float, kl_beta: float, log_ratio: torch.Tensor | None = None,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-edge losses (E,), ratios (E,) and which edges are finite (E,) bool.

    The ratio is exp(log_prob − old_log_prob), or exp(`log_ratio`) when given (GRPO-Guard's); the
    clipped term is multiplied by `weight` (E,) when given, the KL term is not. An edge whose
    log-ratio, advantage or KL is not finite (or whose log-ratio exceeds ±``MAX_LOG_RATIO``) gets
    loss 0 with no gradient: its inputs are replaced *before* ``exp`` and the products, so that the
    backward pass never meets 0·inf, and one bad edge cannot turn the step's shared gradient into NaN."""
    delta = log_prob - old_log_prob if log_ratio is None else log_ratio
    ratio, adv, finite = _finite_inputs(delta, advantage, kl)
    loss_e = clipped_loss(ratio, adv, clip_range)
    if weight is not None:
        loss_e = loss_e * weight
    return _with_kl(loss_e, kl, kl_beta, finite), ratio, finite


def _finite_inputs(delta: torch.Tensor, advantage: torch.Tensor, *more: torch.Tensor | None):
    """Which edges have a finite log-ratio `delta` within ±``MAX_LOG_RATIO``, a finite advantage and
    finite `more` (None skipped); the ratio and the advantage with the others' inputs replaced by 0
    *before* ``exp`` and the products."""
    finite = torch.isfinite(delta) & (delta.abs() <= MAX_LOG_RATIO) & torch.isfinite(advantage)
    for x in more:
        if x is not None:
            finite &= torch.isfinite(x)
    ratio = torch.exp(torch.where(finite, delta, torch.zeros_like(delta)))
    return ratio, torch.where(finite, advantage, torch.zeros_like(advantage)), finite


def _with_kl(loss_e: torch.Tensor, kl: torch.Tensor | None, kl_beta: float, finite: torch.Tensor) -> torch.Tensor:
    """The edges' losses plus the KL term, 0 (without gradient) where an input was not finite."""
    if kl is not None:
        loss_e = loss_e + kl_beta * torch.where(finite, kl, torch.zeros_like(kl))
    return torch.where(finite, loss_e, torch.zeros_like(loss_e))


def dppo_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor, divergence: torch.Tensor,
                threshold: float, kl: torch.Tensor | None = None,
                kl_beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow-DPPO's trust region (Tencent-Hunyuan/UniRL, ``unirl/algorithms/flowdppo.py``): per edge the
    unclipped ``−A·r``, dropped where the step's mean has moved too far from the sampling policy's
    (`divergence` D ≥ `threshold`) *and* the ratio moves the way the advantage pushes it (r > 1 with
    A > 0, or r < 1 with A < 0). Returns the losses (E,), the ratios, which edges are finite and
    which were dropped; the finite masking and the KL term are the clipped loss's."""
    ratio, adv, finite = _finite_inputs(log_prob - old_log_prob, advantage, divergence, kl)
    far = divergence.detach() >= threshold
    dropped = far & (((ratio.detach() > 1.0) & (adv > 0)) | ((ratio.detach() < 1.0) & (adv < 0)))
    loss_e = torch.where(dropped, torch.zeros_like(ratio), -adv * ratio)
    return _with_kl(loss_e, kl, kl_beta, finite), ratio, finite, dropped


def reference_kl(policy: Policy, sampler: Sampler, mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor,
                 delta: torch.Tensor, kl_form: str = "gaussian") -> torch.Tensor:
    """(E,) KL of the policy's step to the reference's, on the draws the noise is made of.

    ``gaussian``: the exact KL of N(μ̄, τ²) to N(μ̄_ref, τ²) per draw, μ̄ the means over the
    sampler's noise tiles on the policy's noise grid (the elements themselves for ``noise_block``
    1), averaged over the draws like the log-probability. ``flow-grpo``: Flow-GRPO's
    ‖μ − μ_ref‖² / (2σ_t²) with its noise level σ_t: for a sampler whose τ² = σ_t²·Δ (Flow-SDE) the
    gaussian form × Δ, so that a β taken from Flow-GRPO's recipes means the same here; for CPS, whose
    σ_t is the whole step's τ, the gaussian form itself, as released.
    """
    d = block_mean(policy.to_noise_grid(mean) - policy.to_noise_grid(mean_ref), sampler.noise_block)
    kl = (d**2).flatten(1).mean(dim=1) / (2.0 * std**2)
    return kl * delta if kl_form == "flow-grpo" and sampler.noise_scales_with_step else kl


def step_means(values: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(E,) each edge's mean of `values` (E,) over the edges of its step (`steps` (E,)), with gradients."""
    _, inverse = torch.unique(steps, return_inverse=True)
    inverse = inverse.to(values.device)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    counts = torch.bincount(inverse).to(values.dtype)
    return (sums / counts)[inverse]


def guarded_log_ratio(policy: Policy, sampler: Sampler, rollout: Rollout, units: EdgeUnits, x_next: torch.Tensor,
                      mean: torch.Tensor, std: torch.Tensor, bias: str = "micro-batch") -> torch.Tensor:
    """(E,) GRPO-Guard's re-centred log-ratio ``s·(log r + B/(2s²))`` with s the step's standard
    deviation and B the mean-shift term: ``bias = "sample"``: each edge's own ‖Δμ‖², Δμ = μ − μ_old
    (the log-ratio is then ``mean(ε ⊙ Δμ)``, ε = (x' − μ_old)/s the drawn noise: zero-mean under the
    rollout, where log r itself drifts to −‖Δμ‖²/(2s²) < 0); ``"micro-batch"``: the mean of ‖Δμ‖² over
    the edges of the same step among `units` (a micro-batch), as the released line reduces it over
    its micro-batch of one step. Computed on the noise's draws (tile means on the policy's noise
    grid), as the log-probabilities are; with gradients, through B too."""
    if not rollout.means:
        raise ValueError("GRPO-Guard needs the rollout's transition means (a rollout that keeps means)")
    old = torch.stack([rollout.means[k][c] for k, c in zip(units.step.tolist(), units.child.tolist(), strict=True)])
    old = old.to(mean.device)
    drawn = block_mean(policy.to_noise_grid(x_next - old), sampler.noise_block)
    shift = block_mean(policy.to_noise_grid(mean - old), sampler.noise_block)
    recentred = (drawn * shift).flatten(1).mean(dim=1) / std
    if bias == "sample":
        return recentred
    own = (shift**2).flatten(1).mean(dim=1)
    return recentred + (step_means(own, units.step) - own) / (2.0 * std)


def step_sizes(rollout: Rollout, units: EdgeUnits) -> torch.Tensor:
    """(E,) the σ-step Δ = σ_k − σ_{k+1} of each edge (GRPO-Guard divides a step's loss by it)."""
    return rollout.sigmas[units.step] - rollout.sigmas[units.step + 1]


class ClippedRatio:
    """The policy-gradient family's objective: per trained edge ``max(−A·r, −A·clip(r, 1 − ε, 1 + ε))``,
    r the ratio of the edge's Gaussian transition density (a mean over the noise's draws) under the
    current and the sampling policy, averaged over the edges of an optimizer step, plus
    ``kl_beta`` times the KL of the step's Gaussian to the base policy's.

    ``kl_form = "flow-grpo"`` takes that KL in Flow-GRPO's form (the Gaussian one × the step size
    Δ). ``grpo_guard`` is GRPO-Guard: the re-centred log-ratio ``s·(log r + ‖Δμ‖²/2s²)`` and each
    step's loss divided by its Δσ (pair it with a clip range near 1e-6, as released), ‖Δμ‖² the
    micro-batch's mean at the edge's step as released (``guard_bias``).
    ``trust_region = "dppo"`` replaces the clip with Flow-DPPO's mask: the unclipped −A·r, left out
    on the edges whose step mean has moved from the sampling policy's by D = mean((μ − μ_old)²)/(2τ²)
    ≥ ``dppo_threshold`` while r moves the way A pushes it (``update/masked_fraction``). It trains on
    per-step densities, so it needs a stochastic sampler.
    """

    unit = "edges"
    metrics = METRICS

    def __init__(
        self,
        *,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-4,
        kl_beta: Annotated[float, Range(ge=0), Doc("weight of the KL penalty to the base policy (0 = off)")] = 0.0,
        kl_form: Annotated[Literal["gaussian", "flow-grpo"], Doc(
            "the exact Gaussian KL per noise draw, or Flow-GRPO's (the gaussian one × the step size Δ)")] = "gaussian",
        grpo_guard: Annotated[bool, Doc(
            "GRPO-Guard: the re-centred log-ratio s·(log r + ‖Δμ‖²/2s²) in the clipped objective and each step's "
            "loss divided by its Δσ (pair with a clip range near 1e-6 as released)")] = False,
        guard_bias: Annotated[Literal["micro-batch", "sample"], Doc(
            "GRPO-Guard's ‖Δμ‖²: micro-batch = its mean over the micro-batch's edges of the same step, as the released "
            "line reduces it (its micro-batches hold one step of train.batch_size chains; train.micro_batch_order = "
            "\"step\" gives such micro-batches); sample = each edge's own, the per-sample reading of the paper's "
            "formula")] = "micro-batch",
        split_logprob: Annotated[Literal["nominal", "scaled"], Doc(
            "a split edge's density with the step's τ (the released BranchGRPO) or with λ·τ, the density its "
            "children were drawn from")] = "nominal",
        trust_region: Annotated[Literal["clip", "dppo"], Doc(
            "clip: the clipped ratio; dppo: Flow-DPPO's, the unclipped −A·r of every edge except those whose step "
            "mean moved by D ≥ dppo_threshold from the sampling policy's while r moves the advantage's way")] = "clip",
        dppo_threshold: Annotated[float, Range(gt=0), Doc(
            "Flow-DPPO's threshold on D = mean((μ − μ_old)²)/(2τ²) per edge (released: 1e-5)")] = 1e-5,
        dppo_scaled: Annotated[bool, Doc(
            "D divided by 2τ² as released (add_kl_coefficient); false: the plain mean squared distance")] = True,
    ) -> None:
        self.clip_range, self.kl_beta, self.kl_form = clip_range, kl_beta, kl_form
        self.grpo_guard, self.guard_bias, self.split_logprob = grpo_guard, guard_bias, split_logprob
        self.trust_region, self.dppo_threshold, self.dppo_scaled = trust_region, dppo_threshold, dppo_scaled
        if grpo_guard and trust_region == "dppo":
            raise UserError("GRPO-Guard re-centres the clipped ratio, which Flow-DPPO's trust region replaces",
                            where="trust_region", hint="choose one: grpo_guard = false or trust_region = \"clip\"")
        self.keep = Keep(log_prob=True, means=grpo_guard or trust_region == "dppo", states=True,
                         split_logprob=split_logprob)
        self.metrics = {**METRICS, **DPPO_METRICS} if trust_region == "dppo" else METRICS

    @property
    def needs_reference(self) -> bool:
        return self.kl_beta > 0

    def check_plan(self, plan: TreePlan, sampler: Sampler) -> None:
        if not any(plan.stochastic):
            raise UserError("the tree has no stochastic step, so no edge has a density to train",
                            where="strategy.topology", hint="use a topology with SDE steps")

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> EdgeUnits:
        return EdgeUnits.gather(rollout, advantages, edges)

    def divergence(self, rollout: Rollout, units: EdgeUnits, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """(E,) Flow-DPPO's D: the mean over the latent's elements of (μ − μ_old)², over 2τ² (as released,
        per element rather than per noise tile), μ_old the rollout's stored mean."""
        old = torch.stack([rollout.means[k][c] for k, c in zip(units.step.tolist(), units.child.tolist(), strict=True)])
        d = ((mean - old.to(mean.device)) ** 2).flatten(1).mean(dim=1)
        return d / (2.0 * std**2) if self.dppo_scaled else d

    def loss(self, units: EdgeUnits, ctx: LossContext) -> UnitLoss:
        policy, sampler, rollout = ctx.policy, ctx.sampler, ctx.rollout
        t = reevaluate(policy, sampler, rollout, ctx.cond, units, self.split_logprob)
        kl = None
        if self.kl_beta > 0:
            with torch.no_grad(), policy.reference():
                v_ref = policy.velocity(t.x, t.sigma, t.cond).float()
            mean_ref, _ = sampler.step(t.x, v_ref, t.sigma, t.sigma_next)
            kl = reference_kl(policy, sampler, t.mean, mean_ref, t.std.detach(), t.sigma - t.sigma_next, self.kl_form)
        log_ratio = weight = None
        if self.grpo_guard:
            log_ratio = guarded_log_ratio(policy, sampler, rollout, units, t.x_next, t.mean, t.std, self.guard_bias)
            weight = 1.0 / step_sizes(rollout, units).to(t.log_prob.device)
        dev = t.log_prob.device
        old = units.old_log_prob.to(dev)
        values = {}
        if self.trust_region == "dppo":
            divergence = self.divergence(rollout, units, t.mean.detach(), t.std.detach())
            loss_e, ratio, finite, dropped = dppo_losses(t.log_prob, old, units.advantage.to(dev), divergence,
                                                         self.dppo_threshold, kl, self.kl_beta)
            values.update(masked=dropped.double(), kl_new_old=divergence)
        else:
            loss_e, ratio, finite = edge_losses(t.log_prob, old, units.advantage.to(dev), kl, self.clip_range,
                                                self.kl_beta, log_ratio=log_ratio, weight=weight)
        values.update(ratio=ratio, clipped=((ratio.detach() - 1.0).abs() > self.clip_range).double(),
                      approx_kl=0.5 * (t.log_prob.detach() - old) ** 2)
        if kl is not None:
            values["kl"] = kl
        return UnitLoss(loss_e, finite, values)
