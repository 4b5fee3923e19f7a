"""What each component interface promises, checked on tiny inputs.

Every check raises ``AssertionError`` naming the broken promise. They use the tiny random shapes
model (``grpo.testing.tiny``), so they run on CPU in seconds and need no downloads.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from grpo.core.pruner import PruneContext
from grpo.core.strategy import StrategyParts
from grpo.core.tree import Advantages, EdgeSet, Rollout, TreePlan

from .tiny import tiny_images, tiny_rollout


def _same(xs: Any, ys: Any) -> bool:
    """Two sequences of tensors, element by element exactly equal."""
    return all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


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
    """A topology returns a TreePlan of `steps` steps, the same one for the same iteration."""
    for it in range(iterations):
        plan = topology.plan(steps, it)
        if not isinstance(plan, TreePlan):
            raise _fail(topology, f"plan() must return a TreePlan, got {type(plan).__name__}")
        if plan.steps != steps:
            raise _fail(topology, f"plan({steps}) has {plan.steps} steps")
        if plan != topology.plan(steps, it):
            raise _fail(topology, f"plan({steps}, {it}) differs between two calls")
        if plan.leaves < 1 or not any(plan.stochastic):
            raise _fail(topology, "a plan needs at least one leaf and one stochastic step")


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
def check_sampler(sampler: Any, *, split_logprob: str = "nominal", tol: float = 1e-5) -> None:
    """A sampler's σ grid runs from its start down to 0; its steps are Gaussian with finite positive
    std on stochastic steps; and re-evaluating the log-probability of every stored transition in
    micro-batches unlike the rollout's gives ratio 1 within `tol` (on-policy)."""
    from grpo.core.update import EdgeBatch, edge_terms

    sigmas = sampler.sigmas()
    if sigmas.shape != (sampler.steps + 1,):
        raise _fail(sampler, f"sigmas() must have steps + 1 = {sampler.steps + 1} values, got {tuple(sigmas.shape)}")
    if not (sigmas[:-1] > sigmas[1:]).all() or float(sigmas[-1]) != 0.0:
        raise _fail(sampler, "sigmas() must decrease strictly and end at 0")
    if not getattr(sampler, "stochastic", True):
        return
    ro, cond, policy = tiny_rollout(sampler=sampler, split_logprob=split_logprob)
    for k, lp in enumerate(ro.log_prob):
        if lp.numel() and not torch.isfinite(lp).all():
            raise _fail(sampler, f"step {k}: log-probabilities of the rollout must be finite")
    adv = Advantages([torch.zeros(s.shape[0]) for s in ro.states[1:]])
    batch = EdgeBatch.gather(ro, adv, EdgeSet.all_stochastic(ro))
    worst = 0.0
    for part in torch.split(torch.arange(len(batch)), 5):
        with torch.no_grad():
            lp, _, _ = edge_terms(policy, sampler, ro, cond, batch.take(part), split_logprob)
        worst = max(worst, float((torch.exp(lp - batch.old_log_prob[part]) - 1).abs().max()))
    if worst > tol:
        raise _fail(sampler, f"on-policy ratio differs from 1 by {worst:.2e} (> {tol:g}): the log-probability of "
                             "a stored transition must not depend on the micro-batch it is evaluated in")


# -- strategies ------------------------------------------------------------------------------------
def check_strategy(strategy: Any, steps: int = 6, *, plugins: Any = ()) -> StrategyParts:
    """A strategy builds StrategyParts whose topology, advantage estimator and pruners keep their own
    contracts on a rollout of its own tree, over `steps` steps. Returns the parts.

    ``build`` gets a ``make`` over every part a run would find (built-in and installed plugins)
    and those of `plugins` (modules, objects or single ``@hookimpl`` functions, as for
    ``load_registry``), so that a strategy can be checked before its package is installed."""
    from grpo.core.compose import PartMaker, default_make
    from grpo.core.registry import load_registry

    parts = strategy.build(PartMaker(load_registry(plugins=plugins)) if plugins else default_make())
    if not isinstance(parts, StrategyParts):
        raise _fail(strategy, f"build() must return StrategyParts, got {type(parts).__name__}")
    if parts.clip_range <= 0:
        raise _fail(strategy, "clip_range must be positive")
    if parts.split_logprob not in ("nominal", "scaled"):
        raise _fail(strategy, "split_logprob must be 'nominal' or 'scaled'")
    check_topology(parts.topology, steps)
    from grpo.plugins.samplers.flow import DanceSDE

    ro, _, _ = tiny_rollout(parts.topology.plan(steps), sampler=DanceSDE(steps=steps, eta=0.5),
                            split_logprob=parts.split_logprob)
    check_advantage(parts.advantage, ro, group_relative=False)
    for pruner in parts.pruners:
        check_pruner(copy.deepcopy(pruner), ro)
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
