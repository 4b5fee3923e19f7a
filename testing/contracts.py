"""What each component interface promises, checked on tiny inputs.

Every check raises ``AssertionError`` naming the broken promise. They use the tiny random shapes
model (``grpo.testing.tiny``), so they run on CPU in seconds and need no downloads.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from grpo.core.objective import Keep, LossContext, Metric, UnitContext, UnitLoss, Units
from grpo.core.pruner import PruneContext
from grpo.core.tree import Advantages, EdgeSet, Rollout, TreePlan

from .tiny import tiny_images, tiny_rollout


def _same(xs: Any, ys: Any) -> bool:
    """Two sequences of tensors, element by element exactly equal (NaN where the other has NaN: the
    log-probability of a deterministic step)."""
    return all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(torch.isnan(a), torch.isnan(b))
               and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) if a.is_floating_point() else torch.equal(a, b)
               for a, b in zip(xs, ys, strict=True))


def _fail(component: Any, promise: str) -> AssertionError:
    return AssertionError(f"{type(component).__name__}: {promise}")


# -- rewards ---------------------------------------------------------------------------------------
def check_reward(reward: Any, images: torch.Tensor | None = None, prompts: list[str] | None = None,
                 *, atol: float = 1e-5) -> None:
    """A reward model scores (N,) fp32 finite values, with (N,) components, deterministically, and a
    score does not depend on what else is in the batch (alone, reordered or in a batch: the same)."""
    if images is None:
        images, prompts = tiny_images(6)
    assert prompts is not None and len(prompts) == images.shape[0], "give one prompt per image"
    if getattr(reward, "media", None) not in ("image", "video"):
        raise _fail(reward, f"attribute media must be 'image' or 'video', not {getattr(reward, 'media', None)!r}")
    out = reward.score(images, prompts)
    n = images.shape[0]
    if not isinstance(out.scores, torch.Tensor) or out.scores.shape != (n,):
        raise _fail(reward, f"scores must be a tensor of shape ({n},), got {getattr(out.scores, 'shape', out.scores)}")
    if out.scores.dtype != torch.float32:
        raise _fail(reward, f"scores must be float32, got {out.scores.dtype}")
    if not torch.isfinite(out.scores).all():
        raise _fail(reward, "scores must be finite on ordinary images")
    for name, values in out.components.items():
        if not isinstance(values, torch.Tensor) or values.shape != (n,):
            raise _fail(reward, f"component {name!r} must have shape ({n},)")
    again = reward.score(images.clone(), list(prompts))
    if not torch.allclose(out.scores, again.scores, atol=atol):
        raise _fail(reward, "the same images and prompts must get the same scores (determinism)")
    alone = torch.cat([reward.score(images[i : i + 1], [prompts[i]]).scores for i in range(n)])
    if not torch.allclose(out.scores, alone, atol=atol):
        worst = int((out.scores - alone).abs().argmax())
        raise _fail(reward, f"an image's score depends on the rest of the batch (image {worst}: "
                            f"{float(out.scores[worst]):.6f} in the batch, {float(alone[worst]):.6f} alone)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shuffled = reward.score(images[perm], [prompts[i] for i in perm.tolist()]).scores
    if not torch.allclose(out.scores[perm], shuffled, atol=atol):
        raise _fail(reward, "an image's score depends on its position in the batch")


# -- topologies ------------------------------------------------------------------------------------
def check_topology(topology: Any, steps: int = 6, iterations: int = 3) -> None:
    """A topology returns a TreePlan of `steps` steps (or of a grid of its own, ``times``), the same one
    for the same iteration, with at least two leaves to compare and a stochastic step, and no split at
    the last step (whose children would all decode from the same x̂0)."""
    for it in range(iterations):
        plan = topology.plan(steps, it)
        if not isinstance(plan, TreePlan):
            raise _fail(topology, f"plan() must return a TreePlan, got {type(plan).__name__}")
        if plan.steps != steps and not plan.times:
            raise _fail(topology, f"plan({steps}) has {plan.steps} steps and no grid of its own (times)")
        if plan != topology.plan(steps, it):
            raise _fail(topology, f"plan({steps}, {it}) differs between two calls")
        if plan.leaves < 2 or not any(plan.stochastic):
            raise _fail(topology, f"a plan needs at least two leaves (a group to compare) and one stochastic step; "
                                  f"plan({steps}, {it}) has {plan.leaves} leaves")
        if plan.branch[-1] > 1:
            raise _fail(topology, f"plan({steps}, {it}) splits at the last step, whose children all decode from the "
                                  "same x̂0 and get the same reward")


# -- advantages ------------------------------------------------------------------------------------
def _rewards(rollout: Rollout, seed: int = 0) -> torch.Tensor:
    return torch.rand(rollout.final.shape[0], generator=torch.Generator().manual_seed(seed))


def check_advantage(estimator: Any, rollout: Rollout | None = None, *, group_relative: bool = True) -> None:
    """An estimator returns one finite fp32 advantage per node of every step (aligned with
    ``states[k + 1]``), deterministically, without changing the rollout. With `group_relative`, equal
    rewards give zero advantages and adding a constant to the rewards changes nothing."""
    ro = rollout or tiny_rollout()[0]
    before = [s.clone() for s in ro.states]
    rewards = _rewards(ro)
    adv = estimator(ro, rewards.clone())
    if not isinstance(adv, Advantages) or len(adv.values) != ro.steps:
        raise _fail(estimator, f"must return Advantages with {ro.steps} per-step tensors")
    for k, values in enumerate(adv.values):
        if values.shape != (ro.states[k + 1].shape[0],):
            raise _fail(estimator, f"step {k}: advantages of shape {tuple(values.shape)}, nodes "
                                   f"{ro.states[k + 1].shape[0]}")
        if values.dtype != torch.float32 or not torch.isfinite(values).all():
            raise _fail(estimator, f"step {k}: advantages must be finite float32")
    again = estimator(ro, rewards.clone())
    if not _same(adv.values, again.values):
        raise _fail(estimator, "the same rollout and rewards must give the same advantages")
    if not _same(before, ro.states):
        raise _fail(estimator, "must not modify the rollout")
    if group_relative:
        flat = estimator(ro, torch.full_like(rewards, 0.7))
        if any(v.abs().max() > 1e-6 for v in flat.values):
            raise _fail(estimator, "equal rewards must give zero advantages (group_relative=True)")
        shifted = estimator(ro, rewards + 3.0)
        if not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(adv.values, shifted.values, strict=True)):
            raise _fail(estimator, "adding a constant to every reward must not change advantages (group_relative=True)")


# -- pruners ---------------------------------------------------------------------------------------
def check_pruner(pruner: Any, rollout: Rollout | None = None, *, iterations: int = 3) -> None:
    """A pruner returns a subset of the edges it is given, deterministically under the iteration's
    seeded generator, and never changes the rollout or the advantages."""
    ro = rollout or tiny_rollout()[0]
    adv = Advantages([torch.randn(s.shape[0], generator=torch.Generator().manual_seed(k))
                      for k, s in enumerate(ro.states[1:])])
    def given() -> EdgeSet:  # as if an earlier pruner had already dropped every third edge
        return EdgeSet([m & (torch.arange(m.numel()) % 3 != 0) for m in EdgeSet.all_stochastic(ro).masks])

    for it in range(iterations):
        edges = given()
        states, logp = [s.clone() for s in ro.states], [lp.clone() for lp in ro.log_prob]
        advs, masks = [a.clone() for a in adv.values], [m.clone() for m in edges.masks]
        out = pruner(ro, adv, edges, PruneContext(it, iterations, torch.Generator().manual_seed(it)))
        if not isinstance(out, EdgeSet) or len(out.masks) != len(edges.masks):
            raise _fail(pruner, "must return an EdgeSet with one mask per step")
        for k, (m_out, m_in) in enumerate(zip(out.masks, masks, strict=True)):
            if m_out.shape != m_in.shape or m_out.dtype != torch.bool:
                raise _fail(pruner, f"step {k}: masks must keep shape {tuple(m_in.shape)} and dtype bool")
            if (m_out & ~m_in).any():
                raise _fail(pruner, f"step {k}: selected an edge it was not given")
        if not _same(states, ro.states) or not _same(logp, ro.log_prob):
            raise _fail(pruner, "must not modify the rollout")
        if not _same(advs, adv.values):
            raise _fail(pruner, "must not modify the advantages")
        if not _same(masks, edges.masks):
            raise _fail(pruner, "must return a new EdgeSet, not modify the one it was given")
        again = pruner(ro, adv, given(), PruneContext(it, iterations, torch.Generator().manual_seed(it)))
        if not _same(out.masks, again.masks):
            raise _fail(pruner, f"iteration {it}: the same generator seed must select the same edges")


# -- samplers --------------------------------------------------------------------------------------
def _check_step(sampler: Any) -> None:
    """One step of a batch of 3: mean of the latents' shape, std (3,) finite and positive when stochastic."""
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = sampler.sigmas()
    sigma, sigma_next = sigmas[:1].expand(3).float(), sigmas[1:2].expand(3).float()
    mean, std = sampler.step(x, v, sigma, sigma_next)
    if not isinstance(mean, torch.Tensor) or mean.shape != x.shape:
        raise _fail(sampler, f"step() must return a mean of the latents' shape {tuple(x.shape)}, got "
                             f"{tuple(getattr(mean, 'shape', ()))}")
    if not isinstance(std, torch.Tensor) or std.shape != (3,):
        raise _fail(sampler, f"step() must return one std per latent, shape (3,) for 3 latents, got "
                             f"{tuple(getattr(std, 'shape', ()))}")
    if sampler.stochastic and not (torch.isfinite(std).all() and (std > 0).all()):
        raise _fail(sampler, "a stochastic step's std must be finite and positive")


def check_sampler(sampler: Any, *, split_logprob: str = "nominal", tol: float = 1e-5) -> None:
    """A sampler's σ grid runs from its start down to 0; a step is a Gaussian whose mean has the
    latents' shape and whose std, one per latent, is finite and positive on a stochastic step; and
    re-evaluating the log-probability of every stored transition in micro-batches unlike the
    rollout's gives ratio 1 within `tol` (on-policy)."""
    from grpo.core.edges import EdgeUnits, reevaluate
    from grpo.core.registry import complete

    sampler = complete(sampler, "sampler")
    sigmas = sampler.sigmas()
    if sigmas.shape != (sampler.steps + 1,):
        raise _fail(sampler, f"sigmas() must have steps + 1 = {sampler.steps + 1} values, got {tuple(sigmas.shape)}")
    if not (sigmas[:-1] > sigmas[1:]).all() or float(sigmas[-1]) != 0.0:
        raise _fail(sampler, "sigmas() must decrease strictly and end at 0")
    _check_step(sampler)
    if not sampler.stochastic:
        return
    ro, cond, policy = tiny_rollout(sampler=sampler, split_logprob=split_logprob)
    for k, lp in enumerate(ro.log_prob):
        if lp.numel() and not torch.isfinite(lp).all():
            raise _fail(sampler, f"step {k}: log-probabilities of the rollout must be finite")
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    units = EdgeUnits.gather(ro, adv, EdgeSet.all_stochastic(ro))
    worst = 0.0
    for part in torch.split(torch.arange(len(units)), 5):
        with torch.no_grad():
            lp = reevaluate(policy, sampler, ro, cond, units.take(part), split_logprob).log_prob  # type: ignore[arg-type]
        worst = max(worst, float((torch.exp(lp - units.old_log_prob[part]) - 1).abs().max()))
    if worst > tol:
        raise _fail(sampler, f"on-policy ratio differs from 1 by {worst:.2e} (> {tol:g}): the log-probability of "
                             "a stored transition must not depend on the micro-batch it is evaluated in")


# -- solvers ---------------------------------------------------------------------------------------
def check_solver(solver: Any, *, steps: int = 6, shift: float = 3.0, atol: float = 1e-4) -> None:
    """A solver follows a straight flow exactly: from x = (1 − σ)·x0 + σ·ε, with the exact velocity
    ε − x0 and clean sample x0 at every step, it lands on (1 − σ')·x0 + σ'·ε at each σ' of a shifted
    grid, in fp32 latents of the input's shape, the same on every call."""
    from grpo.core.registry import complete
    from grpo.core.sampler import sigma_grid
    from grpo.core.solver import Previous

    solver = complete(solver, "solver")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sigmas, v = sigma_grid(steps, shift), eps - x0
    x, previous = eps.clone(), None
    for k in range(steps):
        sigma, sigma_next = sigmas[k].expand(4), sigmas[k + 1].expand(4)
        out = solver.step(x, v, x0, sigma, sigma_next, previous)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != torch.float32:
            raise _fail(solver, f"step() must return fp32 latents of shape {tuple(x.shape)}")
        if not torch.equal(out, solver.step(x, v, x0, sigma, sigma_next, previous)):
            raise _fail(solver, "the same inputs must give the same step")
        exact = (1.0 - sigmas[k + 1]) * x0 + sigmas[k + 1] * eps
        if not torch.allclose(out, exact, atol=atol):
            raise _fail(solver, f"step {k} ({float(sigmas[k]):.3f} → {float(sigmas[k + 1]):.3f}) leaves a straight "
                                f"flow by {float((out - exact).abs().max()):.2e} (> {atol:g})")
        previous, x = Previous(x0, v, sigma), out


# -- objectives ------------------------------------------------------------------------------------
def _check_units(objective: Any, units: Any, expected: int | None = None) -> None:
    if not isinstance(units, Units):
        raise _fail(objective, f"units() must return grpo.core.objective.Units, got {type(units).__name__}")
    n = len(units)
    for name, value in vars(units).items():
        if isinstance(value, torch.Tensor) and value.shape[:1] != (n,):
            raise _fail(objective, f"units field {name!r} has first dimension {tuple(value.shape[:1])}, not ({n},)")
    for name in ("tree", "major", "minor", "chain"):
        if vars(units)[name].dtype != torch.long:
            raise _fail(objective, f"units field {name!r} must be long")
    if units.valid().shape != (n,) or units.valid().dtype != torch.bool:
        raise _fail(objective, f"units.valid() must be ({n},) bool")
    if n and (int(units.major.min()) < 0 or int(units.minor.min()) < 0):
        raise _fail(objective, "units' major and minor keys must be >= 0")
    keys = torch.stack([units.major, units.tree, units.minor], dim=1)
    if torch.unique(keys, dim=0).shape[0] != n:
        raise _fail(objective, "two units share (major, tree, minor): each unit needs its own place in the iteration")
    if expected is not None and n and (int(units.tree.max()) >= expected or int(units.chain.min()) < 0):
        raise _fail(objective, f"units' trees must be this rank's ({expected}) and chains leaves of theirs")


def check_objective(objective: Any, *, sampler: Any = None, plan: TreePlan | None = None, atol: float = 1e-5) -> None:
    """An objective declares what the rollout keeps, its unit's name and its metrics; from a rollout
    that keeps only that, it builds units (long keys, one row each, the same for the same
    generators) whose loss on a micro-batch is (U,) fp32, finite, the same however the units are
    split into micro-batches, with every value its metrics reduce, and with a gradient reaching the
    policy's trainable parameters."""
    from grpo.core.registry import complete

    objective = complete(objective, "objective")
    if not isinstance(objective.unit, str) or not objective.unit.isidentifier():
        raise _fail(objective, f"unit must be a word (it names update/trained_<unit>), got {objective.unit!r}")
    if not isinstance(objective.keep, Keep):
        raise _fail(objective, "keep must be a grpo.core.objective.Keep")
    if not all(isinstance(m, Metric) for m in objective.metrics.values()):
        raise _fail(objective, "metrics must map names to grpo.core.objective.Metric")
    ro, cond, policy = tiny_rollout(plan, sampler=sampler, keep=objective.keep, split_logprob=objective.keep.split_logprob)
    if objective.needs_reference:  # as the engine does before training with a KL term
        policy.snapshot_reference()
    adv = Advantages([torch.randn(s.shape[0], generator=torch.Generator().manual_seed(k))
                      for k, s in enumerate(ro.states[1:])])
    def ctx() -> UnitContext:
        return UnitContext(0, [torch.Generator().manual_seed(100 + t) for t in range(ro.num_trees)])

    units = objective.units(ro, adv, EdgeSet.all_stochastic(ro), ctx())
    _check_units(objective, units, ro.num_trees)
    if len(units) == 0:
        raise _fail(objective, "units() gave no unit for a rollout whose every stochastic edge is trained")
    again = objective.units(ro, adv, EdgeSet.all_stochastic(ro), ctx())
    if not all(torch.equal(a, b) for a, b in zip(vars(units).values(), vars(again).values(), strict=True)
               if isinstance(a, torch.Tensor)):
        raise _fail(objective, "the same rollout, advantages and generators must give the same units")
    lctx = LossContext(policy, complete(sampler, "sampler") if sampler is not None else _default_sampler(), ro, cond)
    whole = objective.loss(units, lctx)
    if not isinstance(whole, UnitLoss):
        raise _fail(objective, f"loss() must return a grpo.core.objective.UnitLoss, got {type(whole).__name__}")
    n = len(units)
    if whole.loss.shape != (n,) or whole.loss.dtype != torch.float32 or whole.finite.shape != (n,):
        raise _fail(objective, f"loss() must give a ({n},) fp32 loss and a ({n},) finite mask")
    if not (whole.finite.all() and torch.isfinite(whole.loss).all()):
        raise _fail(objective, "the loss of ordinary units must be finite")
    for name, value in whole.values.items():  # a metric whose value is not given logs its `empty`
        if not isinstance(value, torch.Tensor) or value.shape != (n,):
            raise _fail(objective, f"value {name!r} must be a tensor of shape ({n},)")
    half = n // 2 or 1
    parts = [objective.loss(units.take(torch.arange(0, half)), lctx), objective.loss(units.take(torch.arange(half, n)), lctx)]
    split = torch.cat([p.loss for p in parts])
    if not torch.allclose(split.detach(), whole.loss.detach(), atol=atol):
        raise _fail(objective, "a unit's loss depends on the micro-batch it is computed in")
    policy.denoiser.zero_grad(set_to_none=True)
    if not whole.loss.requires_grad:
        raise _fail(objective, "the loss must have a gradient reaching the policy's trainable parameters (it has none)")
    whole.loss.sum().backward()
    grads = [p.grad for p in policy.trainable_parameters()]
    if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
        raise _fail(objective, "the loss must have a gradient reaching the policy's trainable parameters")
    if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
        raise _fail(objective, "the loss's gradient must be finite")
    policy.denoiser.zero_grad(set_to_none=True)


def _default_sampler() -> Any:
    from grpo.core.registry import complete
    from grpo.plugins.samplers.flow import DanceSDE

    return complete(DanceSDE(steps=4, eta=0.5), "sampler")


# -- strategies ------------------------------------------------------------------------------------
def check_strategy(preset: Any, steps: int = 6, *, plugins: Any = ()) -> dict[str, Any]:
    """A strategy is a ``Preset`` whose parts are registered (built-in, installed, or in `plugins`:
    modules, objects or single ``@hookimpl`` functions, as for ``load_registry``), take the options it
    gives them, and keep their own contracts on a rollout of its own tree over `steps` steps.
    Returns the built parts by slot (``pruner``: a list)."""
    from grpo.core.registry import instantiate, load_registry
    from grpo.core.schema import validate
    from grpo.core.strategy import SINGLE_SLOTS, Preset
    from grpo.plugins.samplers.flow import DanceSDE

    if not isinstance(preset, Preset):
        raise _fail(preset, "a strategy must be a grpo.core.strategy.Preset")
    registry = load_registry(plugins=plugins)

    def build(kind: str, part: Any) -> Any:
        if part.name not in registry.entries[kind]:
            raise _fail(preset, f"its {kind} {part.name!r} is not registered (pass the plugin that provides it)")
        entry = registry.entries[kind][part.name]
        try:
            return instantiate(entry, validate(entry.factory, dict(part.options), f"strategy.{kind}"), kind)
        except Exception as e:
            raise _fail(preset, f"its {kind} {part.name!r} does not take the options it gives: {e}") from None

    parts: dict[str, Any] = {slot: build(slot, preset.part(slot)) for slot in SINGLE_SLOTS}
    parts["pruner"] = [build("pruner", p) for p in preset.pruners]
    build("sampler", preset.sampler)
    check_topology(parts["topology"], steps)
    sampler = DanceSDE(steps=steps, eta=0.5)
    plan = parts["topology"].plan(steps)
    ro, _, _ = tiny_rollout(plan, sampler=sampler, split_logprob=parts["objective"].keep.split_logprob)
    check_advantage(parts["advantage"], ro, group_relative=False)
    for pruner in parts["pruner"]:
        check_pruner(copy.deepcopy(pruner), ro)
    check_objective(parts["objective"], sampler=sampler, plan=plan)
    check_solver(parts["solver"])
    return parts


# -- models ----------------------------------------------------------------------------------------
def check_policy(policy: Any, prompts: list[str] | None = None, *, atol: float = 1e-5) -> None:
    """A policy encodes one conditioning row per prompt, predicts velocities of the latents' shape
    that do not depend on the rest of the batch, decodes media in [0, 1], exposes trainable
    parameters of its denoiser, and inside ``reference()`` predicts like the untrained base."""
    from grpo.core.policy import Conditioning

    from .tiny import PROMPTS

    prompts = prompts or PROMPTS[:3]
    n = len(prompts)
    cond = policy.encode_prompts(prompts)
    if not isinstance(cond, Conditioning):
        raise _fail(policy, f"encode_prompts must return a Conditioning, got {type(cond).__name__}")
    for name, value in vars(cond).items():
        if isinstance(value, torch.Tensor) and value.shape[0] != n:
            raise _fail(policy, f"conditioning field {name!r} has first dimension {value.shape[0]}, prompts {n}")
    x = torch.randn(n, *policy.latent_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.linspace(0.9, 0.2, n)
    with torch.no_grad():
        v = policy.velocity(x, sigma, cond)
        alone = torch.cat([policy.velocity(x[i : i + 1], sigma[i : i + 1], cond.select(torch.tensor([i])))
                           for i in range(n)])
    if v.shape != x.shape or not torch.isfinite(v).all():
        raise _fail(policy, f"velocity must be finite with the latents' shape {tuple(x.shape)}, got {tuple(v.shape)}")
    if not torch.allclose(v, alone, atol=atol):
        raise _fail(policy, "a sample's velocity depends on the rest of the batch")
    media = policy.decode(x.clamp(-1, 1))
    expected_rank = 4 if policy.media == "image" else 5
    if media.dim() != expected_rank or media.shape[0] != n or media.min() < 0 or media.max() > 1:
        raise _fail(policy, f"decode must give {policy.media}s of rank {expected_rank} in [0, 1]")
    params = policy.trainable_parameters()
    denoiser_params = {id(p) for p in policy.denoiser.parameters()}
    if not params or not all(p.requires_grad and id(p) in denoiser_params for p in params):
        raise _fail(policy, "trainable_parameters must be non-empty parameters of the denoiser that require grad")
    if hasattr(policy, "snapshot_reference"):  # the engine takes the snapshot before training with a KL term
        policy.snapshot_reference()
    with torch.no_grad(), policy.reference():
        ref = policy.velocity(x, sigma, cond)
    if not torch.allclose(ref, v, atol=atol):
        raise _fail(policy, "before any training, reference() must predict like the policy itself")


# -- backends --------------------------------------------------------------------------------------
def check_backend(make_backend: Any, tmp_dir: Any) -> None:
    """A backend trains the given parameters (loss goes down), returns finite gradient norms, skips a
    step whose gradient is not finite, and restores weights and optimizer state from ``save``.

    `make_backend` builds a fresh backend; `tmp_dir` is a folder for the checkpoint.
    """
    from pathlib import Path

    from grpo.core.backend import OptimizerConfig

    def fresh():
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        backend = make_backend()
        backend.setup(module, list(module.parameters()), OptimizerConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                                                                   grad_clip=1.0))
        return module, backend

    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(dim=1, keepdim=True)

    def loss_of(module):
        return torch.nn.functional.mse_loss(module(x), y)

    module, backend = fresh()
    first = float(loss_of(module))
    for _ in range(5):
        for half in (slice(0, 16), slice(16, 32)):  # two micro-batches per optimizer step
            backend.backward(0.5 * torch.nn.functional.mse_loss(module(x[half]), y[half]), boundary=half.start == 16)
        norm = backend.step()
        if not (norm == norm and norm < float("inf")):
            raise _fail(backend, f"step() returned a non-finite gradient norm {norm}")
    if not float(loss_of(module)) < first:
        raise _fail(backend, "five optimizer steps did not lower a simple regression loss")
    before = [p.detach().clone() for p in module.parameters()]
    backend.backward(loss_of(module) * float("nan"), boundary=True)
    backend.step()
    if not _same(before, (p.detach() for p in module.parameters())):
        raise _fail(backend, "a step with a non-finite gradient must be skipped")
    folder = Path(tmp_dir) / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(folder)
    backend.backward(loss_of(module), boundary=True)
    backend.step()
    after_a = [p.detach().clone() for p in module.parameters()]
    backend.close()
    module2, backend2 = fresh()
    backend2.load(folder)
    if not _same(before, (p.detach() for p in module2.parameters())):
        raise _fail(backend, "load() must restore the saved weights")
    backend2.backward(loss_of(module2), boundary=True)
    backend2.step()
    if not all(torch.allclose(a, p.detach(), atol=1e-6) for a, p in zip(after_a, module2.parameters(), strict=True)):
        raise _fail(backend, "load() must restore the optimizer state: the next step differs")
    backend2.close()


# -- prompt sources --------------------------------------------------------------------------------
def check_prompts(source: Any) -> None:
    """A prompt source gives a non-empty list of training prompts (strings) and named evaluation sets
    of strings, the same on every call."""
    train = source.train_prompts()
    if not isinstance(train, list) or not train or not all(isinstance(p, str) for p in train):
        raise _fail(source, "train_prompts() must be a non-empty list of strings")
    sets = source.eval_sets()
    if not isinstance(sets, dict) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                             for v in sets.values()):
        raise _fail(source, "eval_sets() must map set names to lists of strings")
    if source.train_prompts() != train or source.eval_sets() != sets:
        raise _fail(source, "prompts must be the same on every call")
