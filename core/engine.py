"""The training loop. It knows no algorithm by name:

    prompts → topology plan → batched rollout → rewards on leaves → advantages per edge
    → pruners choose trained edges → clipped-ratio update → log / evaluate / checkpoint

Every iteration draws its randomness from a generator seeded by (seed, iteration), so a run
resumed from a checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tomli_w
import torch

from . import checkpoint
from .backend import Backend, OptimizerConfig
from .dist import Group
from .errors import UserError
from .images import caption_grid, caption_video_grid, gif_bytes, pil_to_tensor
from .policy import Conditioning, Policy
from .preflight import check_paths
from .pruner import PruneContext
from .recipe import Recipe
from .registry import attributed
from .reward import RewardModel
from .rollout import chunked, noise_block, rollout
from .rundir import FINISHED, RESOLVED
from .runlog import RunLog, truncate_jsonl
from .sampler import EulerODE, Sampler, tile_grid
from .strategy import StrategyParts
from .tree import Advantages, EdgeSet, Rollout, TreePlan
from .update import EdgeBatch, UpdateConfig, update

log = logging.getLogger(__name__)



class Reporter(Protocol):
    """Receives progress; the CLI draws it with rich. Every method is optional to act on."""

    def start(self, total: int, done: int) -> None: ...
    def stage(self, name: str) -> None: ...
    def iteration(self, iteration: int, metrics: dict[str, float]) -> None: ...
    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None: ...


class _NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, iteration: int, kind: str, values: dict[str, Any]) -> None: ...
    def image(self, tag: str, image: torch.Tensor, iteration: int) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def start(self, total: int, done: int) -> None: ...
    def stage(self, name: str) -> None: ...
    def iteration(self, iteration: int, metrics: dict[str, float]) -> None: ...
    def evaluation(self, iteration: int, metrics: dict[str, float]) -> None: ...


def iteration_generator(seed: int, iteration: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, iteration, stream)."""
    state = np.random.SeedSequence([seed, iteration, stream]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


def tree_generators(seed: int, iteration: int, trees: range) -> list[torch.Generator]:
    """One generator per tree of the iteration (by its index in the iteration's prompt list): a tree's
    noise does not depend on which rank samples it or on the other trees beside it."""
    return [iteration_generator(seed, iteration, 1_000_000 + t) for t in trees]


def impute_failed(rollout: Rollout, scores: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Leaves a reward could not score (NaN) get the mean of their tree's scored leaves, so that they
    move no advantage; returns the scores and the (N,) mask of leaves with any failed reward."""
    tree = rollout.tree[-1]
    trees = int(tree.max()) + 1 if tree.numel() else 0
    failed = torch.zeros(tree.shape[0], dtype=torch.bool)
    out = []
    for s in scores:
        bad = ~torch.isfinite(s)
        if bad.any():
            failed |= bad
            total = torch.zeros(trees).index_add(0, tree, torch.where(bad, torch.zeros_like(s), s))
            count = torch.zeros(trees).index_add(0, tree, (~bad).float())
            s = torch.where(bad, (total / count.clamp(min=1.0))[tree], s)
        out.append(s)
    return out, failed


def check_world(recipe: Recipe, launched: int, ranks: int) -> None:
    """Refuse a run that `launched` ranks cannot share: a backend that runs `ranks` ≠ `launched`
    processes, or prompts per iteration that do not split into whole trees per rank."""
    if launched > 1 and ranks != launched:
        raise UserError(f"started as {launched} ranks, but backend {recipe.backend.entry.name!r} runs in one process",
                        where="backend.use", hint="use a backend that runs several processes ('torch' or 'deepspeed'), or run one process")
    per = recipe.train.prompts_per_iteration
    if per % ranks:
        raise UserError(f"{per} prompts per iteration do not split evenly over {ranks} ranks",
                        where="train.prompts_per_iteration", hint=f"use a multiple of {ranks}: each rank samples whole trees")


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of its 95% normal interval (1.96 standard errors; 0 for n < 2).
    Values that are not finite (a reward that could not score) are left out."""
    v = values.double()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return float(v.mean()) if v.numel() else float("nan"), 0.0
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


@dataclass
class Components:
    """Everything built from a recipe."""

    policy: Policy
    sampler: Sampler
    parts: StrategyParts
    plan: TreePlan
    rewards: list[tuple[str, float, RewardModel]]
    train_prompts: list[str]
    eval_sets: dict[str, list[str]]
    backend: Backend


def build(recipe: Recipe) -> Components:
    """Instantiate every component; the cheap ones first, so that their errors come before weights load."""
    check_paths(recipe)  # every missing file at once, before anything is read
    source = recipe.prompts.create()
    train_prompts = source.train_prompts()
    if not train_prompts:
        raise UserError("the prompt source gives no training prompts", where="prompts")
    eval_sets = source.eval_sets()
    sampler = recipe.sampler_instance
    parts = recipe.composition.parts
    plan = parts.topology.plan(sampler.steps)
    rewards = [(r.label, r.weight, r.create()) for r in recipe.rewards]
    backend = recipe.backend.create()
    policy = recipe.model.create()
    height, width = tuple(policy.latent_shape)[-2:]
    try:
        tile_grid(height, width, noise_block(sampler))
    except ValueError as e:
        divisors = [b for b in range(1, min(height, width) + 1) if height % b == 0 and width % b == 0]
        raise UserError(str(e), where="sampler.noise_block", hint=f"use one of {divisors}") from None
    for name, _, model in rewards:
        if getattr(model, "fps", None) == 0 and getattr(policy, "fps", None):
            model.fps = policy.fps  # a video reward sees frames at the model's real fps
        if model.media != policy.media:
            raise UserError(f"reward {name!r} scores {model.media}s but the model makes {policy.media}s",
                            where="reward", hint="choose a reward for the model's media")
    return Components(policy, sampler, parts, plan, rewards, train_prompts, eval_sets, backend)


@contextmanager
def _timer(times: dict[str, float], key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        times[key] = times.get(key, 0.0) + time.perf_counter() - start


@dataclass
class Trainer:
    recipe: Recipe
    run_dir: Path
    reporter: Any = field(default_factory=_Silent)

    def __post_init__(self) -> None:
        self._cond_cache: dict[str, Conditioning] = {}
        self.group = Group()

    # -- prompt embeddings -------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> Conditioning:
        """Embeddings of `prompts`, computed once per distinct prompt."""
        missing = sorted({p for p in prompts if p not in self._cond_cache})
        if missing:
            cond = self.c.policy.encode_prompts(missing)
            for i, p in enumerate(missing):
                self._cond_cache[p] = cond.select(torch.tensor([i]))
        first = self._cond_cache[prompts[0]]
        values = {}
        for name, value in vars(first).items():
            if isinstance(value, torch.Tensor):
                values[name] = torch.cat([getattr(self._cond_cache[p], name) for p in prompts])
            else:
                values[name] = value
        return type(first)(**values)

    # -- rewards -------------------------------------------------------------------------------
    def score(self, images: torch.Tensor, prompts: list[str]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Per-reward scores (N,) and every reported component, keyed ``name/component``."""
        scores, report = [], {}
        for (name, _, model), spec in zip(self.c.rewards, self.recipe.rewards, strict=True):
            with attributed(spec.entry, "score()"):
                out = model.score(images, prompts)
            if out.scores.shape != (images.shape[0],):
                raise RuntimeError(f"reward {name!r} returned shape {tuple(out.scores.shape)} for {images.shape[0]} images")
            scores.append(out.scores.float())
            report[f"{name}"] = out.scores.float()
            for comp, values in out.components.items():
                report[f"{name}/{comp}"] = values.float()
        return scores, report

    def advantages(self, ro: Rollout, scores: list[torch.Tensor]) -> Advantages:
        weights = [w for _, w, _ in self.c.rewards]
        part = f"advantage estimator {type(self.c.parts.advantage).__name__}"

        def estimator(ro: Rollout, rewards: torch.Tensor) -> Advantages:
            with attributed(self.recipe.strategy.entry, "computing advantages", part):
                return self.c.parts.advantage(ro, rewards)

        if self.recipe.train.reward_aggregation == "sum":
            total = sum(w * s for w, s in zip(weights, scores, strict=True))
            return estimator(ro, total)
        per = [estimator(ro, s) for s in scores]
        return Advantages([sum(w * a.values[k] for w, a in zip(weights, per, strict=True)) for k in range(ro.steps)])

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, iteration: int) -> dict[str, float]:
        cfg = self.recipe.eval
        steps = cfg.steps or self.c.sampler.steps
        ode = EulerODE(steps, getattr(self.c.sampler, "shift", 1.0))
        plan = TreePlan((1,) * steps, (1.0,) * steps, (False,) * steps)
        metrics: dict[str, float] = {}
        per_image: dict[str, dict[str, list[float]]] = {}
        grid_images, grid_captions = [], []
        for set_name, prompts in self.c.eval_sets.items():
            noise = self.eval_noise[set_name]
            # each rank evaluates an equal share (the last shares padded with the first image, so
            # that every rank runs the same number of forwards); the scores are gathered
            n, ranks = len(prompts), self.group.size
            per = -(-n // ranks)
            own = [i for i in range(self.group.rank * per, (self.group.rank + 1) * per) if i < n]
            index = own + [0] * (per - len(own))
            finals = []
            for sl in chunked(per, cfg.batch):
                part = index[sl]
                cond = self.encode([prompts[i] for i in part])
                ro = rollout(self.c.policy, ode, plan, cond, generator=torch.Generator(), max_batch=cfg.batch,
                             init_noise=noise[part])
                finals.append(self.c.policy.decode(ro.final))
            images = torch.cat(finals) if finals else torch.zeros(0)
            _, report = self.score(images, [prompts[i] for i in index])
            valid = self.group.gather(torch.arange(per) < len(own))
            report = {k: self.group.gather(v)[valid] for k, v in report.items()}
            per_image[set_name] = {k: v.tolist() for k, v in report.items()}
            for key, values in report.items():
                m, ci = mean_ci(values)
                metrics[f"{set_name}/{key}"] = m
                metrics[f"{set_name}/{key}/ci95"] = ci
            if cfg.grid_images:
                take = np.linspace(0, n - 1, min(cfg.grid_images, n)).round().astype(int)
                picked_here = set(take.tolist())
                mine = [j for j, i in enumerate(own) if i in picked_here]
                picked = self.group.gather(images[mine] if mine else images[:0])
                grid_images.append(picked)
                grid_captions += [f"[{set_name}] {prompts[i]}" for i in take]
        if grid_images and cfg.grid_images:
            imgs = torch.cat(grid_images)
            sel = np.linspace(0, len(imgs) - 1, min(cfg.grid_images, len(imgs))).round().astype(int)
            if self.group.main:
                captions = [grid_captions[i] for i in sel]
                (self.run_dir / "samples").mkdir(exist_ok=True)
                if imgs.dim() == 5:  # videos: an animated grid, and its middle frame as the still
                    frames = caption_video_grid(imgs[sel], captions)
                    gif = gif_bytes(frames, getattr(self.c.policy, "fps", 8))
                    (self.run_dir / "samples" / f"eval_{iteration:06d}.gif").write_bytes(gif)
                    self.log.animation("eval/videos", gif, frames[0].width, frames[0].height, iteration)
                    grid = frames[len(frames) // 2]
                else:
                    grid = caption_grid(imgs[sel], captions)
                grid.save(self.run_dir / "samples" / f"eval_{iteration:06d}.png")
                self.log.image("eval/samples", pil_to_tensor(grid), iteration)
        if self.group.main:
            (self.run_dir / "eval").mkdir(exist_ok=True)
            torch.save(per_image, self.run_dir / "eval" / f"iter_{iteration:06d}.pt")
        return metrics

    # -- one iteration ---------------------------------------------------------------------------
    def iteration(self, it: int) -> dict[str, float]:
        t = self.recipe.train
        times: dict[str, float] = {}
        gen = iteration_generator(t.seed, it)
        n_prompts = len(self.c.train_prompts)
        if t.prompts_per_iteration <= n_prompts:
            idx = torch.randperm(n_prompts, generator=gen)[: t.prompts_per_iteration]
        else:
            idx = torch.randint(n_prompts, (t.prompts_per_iteration,), generator=gen)
        all_prompts = [self.c.train_prompts[i] for i in idx.tolist()]
        if self.group.main:
            self._log_prompts(it, all_prompts)
        # whole trees are this rank's share: a group never spans ranks, so advantages stay local
        mine = self.group.shard(len(all_prompts))
        prompts = all_prompts[mine]
        cond = self.encode(prompts)
        self.reporter.stage("rollout")
        with _timer(times, "rollout"):
            plan = self.c.parts.topology.plan(self.c.sampler.steps, it)
            shared = None
            if t.init_same_noise:
                shared = torch.randn((1, *self.c.policy.latent_shape), generator=iteration_generator(t.seed, it, 1))
                shared = shared.expand(len(prompts), *self.c.policy.latent_shape).clone()
            ro = rollout(self.c.policy, self.c.sampler, plan, cond, max_batch=t.rollout_batch,
                         generator=tree_generators(t.seed, it, range(mine.start, mine.stop)), init_noise=shared,
                         split_logprob=self.c.parts.split_logprob,
                         on_step=lambda k: self.reporter.stage(f"rollout {k + 1}/{plan.steps}"))
        self.reporter.stage("reward")
        with _timer(times, "reward"):
            images = self.c.policy.decode(ro.final)
            leaf_prompts = [prompts[i] for i in ro.tree[-1].tolist()]
            scores, report = self.score(images, leaf_prompts)
        with _timer(times, "advantage"):
            scores, failed = impute_failed(ro, scores)
            adv = self.advantages(ro, scores)
            edges = EdgeSet.all_stochastic(ro)
            # the pruners' draws: one stream per rank (on one rank, the same stream every time)
            ctx = PruneContext(it, t.iterations, iteration_generator(t.seed, it, 2 + self.group.rank),
                               gather=self.group.gather, rank=self.group.rank)
            for pruner in self.c.parts.pruners:
                with attributed(self.recipe.strategy.entry, "pruning", f"pruner {type(pruner).__name__}"):
                    edges = pruner(ro, adv, edges, ctx)
            if failed.any():  # a leaf without a score trains nothing: only edges it shares with scored leaves stay
                edges = EdgeSet([m & (ro.reduce_leaves(failed.float(), k + 1) < 1.0 - 1e-6)
                                 for k, m in enumerate(edges.masks)])
            batch = EdgeBatch.gather(ro, adv, edges)
        self.reporter.stage("update")
        with _timer(times, "update"):
            done_edges = [0]
            total_edges = len(batch) * t.epochs

            def on_micro_batch(n: int) -> None:
                done_edges[0] += n
                self.reporter.stage(f"update {done_edges[0]}/{total_edges}")

            stats = update(self.c.policy, self.c.sampler, self.c.backend, ro, cond, batch, self.update_cfg, gen,
                           on_micro_batch=on_micro_batch, group=self.group)
        metrics: dict[str, float] = {}
        report = {key: self.group.gather(values) for key, values in report.items()}
        for key, values in report.items():
            ok = values[torch.isfinite(values)]
            metrics[f"reward/{key}/mean"] = float(ok.mean()) if ok.numel() else float("nan")
            if "/" not in key:
                metrics[f"reward/{key}/std"] = float(ok.std()) if ok.numel() > 1 else 0.0
        metrics["reward/failed"] = float(self.group.gather(failed.float()).sum())
        metrics.update({f"update/{k}": float(v) for k, v in vars(stats).items()})
        metrics["update/lr"] = self.recipe.train.lr
        # costs of the whole iteration (every rank's trees)
        metrics["cost/rollout_forwards"] = float(sum(s.shape[0] for s in ro.states[:-1])) * self.group.size
        metrics["cost/trained_edges"] = float(stats.trained_edges)
        metrics["cost/leaves"] = float(ro.states[-1].shape[0]) * self.group.size
        memory = getattr(self.c.backend, "memory", None)
        if memory is not None:  # this rank's share of the training state, in MiB
            metrics.update({f"memory/{k}": v / 2**20 for k, v in memory().items()})
        for k, v in times.items():
            metrics[f"time/{k}"] = v
        metrics["time/iteration"] = sum(times.values())
        return metrics

    def _log_prompts(self, it: int, prompts: list[str]) -> None:
        """Append the iteration's training prompts to ``prompts.jsonl`` (rewritten from `it` on resume)."""
        path = self.run_dir / "prompts.jsonl"
        with path.open("a") as fh:
            fh.write(json.dumps({"iteration": it, "prompts": prompts}) + "\n")

    def _maybe_evaluate(self, done: int, force: bool = False) -> None:
        every, total = self.recipe.eval.every, self.recipe.train.iterations
        if not every or not self.c.eval_sets:
            return
        if force or done % every == 0 or done == total:
            self.reporter.stage("evaluate")
            start = time.perf_counter()
            ev = self.evaluate(done)
            ev["time/evaluation"] = time.perf_counter() - start
            self.log.write(done, "eval", ev)
            self.reporter.evaluation(done, ev)

    # -- the run -----------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> dict[str, float]:
        t = self.recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        # TF32 convolutions made on-policy ratios drift by 3.8e-5 on an H100 (2.4e-7 without), a
        # large share of clip ranges of 1e-4..1e-3: off unless asked for.
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
        # randomly initialised weights (LoRA adapters) depend on the seed, not on what ran before
        torch.manual_seed(t.seed)
        self.c = build(self.recipe)
        self.update_cfg = UpdateConfig(
            clip_range=self.c.parts.clip_range, optimizer_steps=t.optimizer_steps, epochs=t.epochs,
            micro_batch=t.micro_batch, accumulation_unit=t.accumulation_unit, kl_beta=t.kl_beta,
            split_logprob=self.c.parts.split_logprob,  # type: ignore[arg-type]
        )
        params = self.c.policy.trainable_parameters()
        if not params:
            raise UserError("the model has no trainable parameters", where="model",
                            hint="check model.freeze / model.lora_rank")
        if t.kl_beta > 0 and hasattr(self.c.policy, "snapshot_reference"):
            self.c.policy.snapshot_reference()
        ranks = getattr(self.c.backend, "world_size", 1)
        check_world(self.recipe, int(os.environ.get("WORLD_SIZE", "1")), ranks)
        self.c.policy.denoiser.eval()  # no dropout: the rollout and the update see the same policy
        self.c.backend.setup(self.c.policy.denoiser, params, OptimizerConfig(
            lr=t.lr, weight_decay=t.weight_decay, betas=(t.betas[0], t.betas[1]), eps=t.eps, grad_clip=t.grad_clip))
        self.group = Group(getattr(self.c.backend, "rank", 0), ranks)
        place = getattr(self.c.backend, "place_frozen", None)
        if t.kl_beta > 0 and place is not None and hasattr(self.c.policy, "place_reference"):
            self.c.policy.place_reference(place)
        main = self.group.main
        start, elapsed = 0, 0.0
        if resume:
            found = checkpoint.latest(self.run_dir)
            if found is not None:
                saved_ranks = int(checkpoint.engine_state(found[0]).get("world_size", 1))
                if saved_ranks != ranks:
                    raise UserError(f"the checkpoint was written by {saved_ranks} rank(s); this run has {ranks}",
                                    where="--resume", hint=f"resume with --nproc {saved_ranks}")
                self.c.backend.load(found[0])
                start = found[1]
                elapsed = float(checkpoint.engine_state(found[0]).get("elapsed", 0.0))
                log.info("resuming at iteration %d from %s", start, found[0])
            self.group.barrier()  # every rank has read the checkpoint before rank 0 may replace it
            if main:
                (self.run_dir / FINISHED).unlink(missing_ok=True)
        elif main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resolved = self.recipe.to_dict()
            resolved["parts"] = self.recipe.composition.to_dict()
            resolved["provenance"] = self.recipe.provenance()
            (self.run_dir / RESOLVED).write_text(tomli_w.dumps(resolved))
        self.group.barrier()
        if main:
            self._write_runtime()
        self.log = (RunLog(self.run_dir, tensorboard=self.recipe.logging.tensorboard, start_iteration=start)
                    if main else _NoLog())
        if main:
            truncate_jsonl(self.run_dir / "prompts.jsonl", start)
        eval_gen = torch.Generator().manual_seed(self.recipe.eval.seed)
        self.eval_noise = {name: torch.randn((len(p), *self.c.policy.latent_shape), generator=eval_gen)
                           for name, p in self.c.eval_sets.items()}
        plan = self.c.plan
        self.log.write(start, "plan", {"leaves_per_tree": plan.leaves, "rollout_forwards_per_tree": plan.rollout_forwards,
                                        "edges_per_tree": plan.edges})
        self.reporter.start(t.iterations, start)
        if main:
            self._write_eval_fingerprint()
        budget = t.time_budget * 60.0
        last: dict[str, float] = {}
        done, reason = start, "iterations"
        try:
            if start < t.iterations:
                # a resumed run repeats the evaluation of its checkpoint (records from `start` on
                # were dropped); a fresh run evaluates the base model
                self._maybe_evaluate(start, force=start == 0)
            for it in range(start, t.iterations):
                if budget and elapsed >= budget:
                    reason = "time_budget"
                    break
                last = self.iteration(it)
                # rank 0's clock decides the time budget, so that every rank stops at the same iteration
                elapsed = self.group.broadcast(elapsed + last["time/iteration"])
                last["time/elapsed"] = elapsed
                self.log.write(it, "train", last)
                self.reporter.iteration(it, last)
                done = it + 1
                over = bool(budget) and elapsed >= budget
                if done % t.checkpoint_every == 0 or done == t.iterations or over:
                    self.reporter.stage("checkpoint")
                    checkpoint.save(self.run_dir, self.c.backend, done, t.keep_checkpoints, {"elapsed": elapsed},
                                    group=self.group)
                self._maybe_evaluate(done, force=over)
                if over:
                    reason = "time_budget"
                    break
            if start == done and start > 0:  # resumed a finished run: its last evaluation
                self._maybe_evaluate(start, force=True)
            if main:
                (self.run_dir / FINISHED).write_text(json.dumps(
                    {"iterations": done, "reason": reason, "elapsed": elapsed}) + "\n")
        finally:
            self.log.close()
            self.c.backend.close()
        return last

    def _write_runtime(self) -> None:
        """``runtime.json``: the torch build, the device, and where the backend says training runs."""
        cuda = torch.cuda.is_available()
        info: dict[str, Any] = {
            "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "gpu": torch.cuda.get_device_name() if cuda else "none", "ranks": self.group.size,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
        describe = getattr(self.c.backend, "runtime", None)
        if describe is not None:
            info["backend"] = describe()
        (self.run_dir / "runtime.json").write_text(json.dumps(info, indent=1) + "\n")
        log.info("runtime: %s", json.dumps(info))

    def _write_eval_fingerprint(self) -> None:
        """SHA-256 of each evaluation set's prompts and noise, so that runs can be checked for equal evaluations."""
        out = {}
        for name, noise in self.eval_noise.items():
            h = hashlib.sha256(noise.numpy().tobytes())
            h.update("\n".join(self.c.eval_sets[name]).encode())
            out[name] = h.hexdigest()
        (self.run_dir / "eval").mkdir(exist_ok=True)
        (self.run_dir / "eval" / "fingerprint.json").write_text(json.dumps(out, indent=1) + "\n")
