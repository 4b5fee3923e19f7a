"""The training loop. It knows no algorithm by name:

    prompts → topology plan → batched rollout → rewards on leaves → advantages per edge
    → pruners choose trained edges → the objective's units → update → log / evaluate / checkpoint

``Trainer.setup`` builds and checks every component once; ``Trainer.iteration`` is that pipeline;
``Trainer.run`` repeats it with checkpoints and evaluations. Every random draw comes from a stream
of ``(train.seed, iteration)`` (``grpo.core.streams``), so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, runrecord, streams
from .backend import OptimizerConfig
from .components import PromptCache, build, check_world
from .config import Recipe
from .dist import Group, bind_local_gpu
from .ema import WeightCopies, lagged_weights, weight_average
from .errors import UserError
from .evaluation import Evaluator, Schedule
from .objective import LossContext, UnitContext
from .progress import NoLog, Silent, timed, update_progress
from .pruner import PruneContext
from .rollout import rollout
from .rundir import RunDir, write_runtime
from .runlog import RunLog, truncate_jsonl
from .runrecord import Resumed
from .scoring import impute_failed, iteration_metrics, zero_std_ratio
from .tree import EdgeSet
from .update import UpdateConfig, update

__all__ = ["Trainer", "build", "check_world"]
log = logging.getLogger(__name__)


@dataclass
class Trainer:
    recipe: Recipe
    run_dir: Path
    reporter: Any = field(default_factory=Silent)
    resumed: Resumed | None = None

    # -- setup: every component built and checked once ------------------------------------------
    def setup(self, *, resume: bool = False) -> tuple[int, float]:
        """Build the components, hand the denoiser to the backend, prepare the run directory and the
        evaluation; returns (the first iteration to run, training seconds already spent)."""
        t = self.recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        # TF32 convolutions make rollout and update disagree by more than fp32 rounding: off unless asked for
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = t.tf32
        torch.manual_seed(t.seed)  # randomly initialised weights (LoRA adapters) follow the seed
        bind_local_gpu()  # "cuda" is this rank's GPU for every component built below
        self.dirs, self.c = RunDir(self.run_dir), build(self.recipe)
        self.prompts = PromptCache(self.c.policy)
        self._setup_training()
        start, elapsed = self._open_run_dir(resume)
        lg = self.recipe.logging
        wandb = dict(project=lg.project, entity=lg.entity, name=lg.name, mode=lg.mode) if lg.wandb else None
        self.log = RunLog(self.run_dir, tensorboard=lg.tensorboard, start_iteration=start,
                          wandb=wandb) if self.group.main else NoLog()
        self.evaluator = Evaluator(self.recipe.eval, self.c.eval_sets, tuple(self.c.policy.latent_shape),
                                   policy=self.c.policy, sampler=self.c.sampler,
                                   solver=self.c.eval_solver, rewards=self.c.rewards, encode=self.prompts.encode,
                                   group=self.group, run_dir=self.dirs, log=self.log)
        if self.group.main:
            truncate_jsonl(self.dirs.prompts, start)
            self.evaluator.fingerprint()
        return start, elapsed

    def _setup_training(self) -> None:
        """The update's schedule, the objective's reference policy, the backend and the process group."""
        t, c = self.recipe.train, self.c
        self.update_cfg = UpdateConfig(optimizer_steps=t.optimizer_steps, epochs=t.epochs, micro_batch=t.micro_batch,
                                       accumulation_unit=t.accumulation_unit, micro_batch_order=t.micro_batch_order)
        params = c.policy.trainable_parameters()
        if not params:
            raise UserError("the model has no trainable parameters", where="model",
                            hint="check model.freeze / model.lora_rank")
        if c.parts.objective.needs_reference:
            c.policy.snapshot_reference()
        check_world(self.recipe, int(os.environ.get("WORLD_SIZE", "1")), c.backend.world_size)
        c.policy.denoiser.eval()  # no dropout: the rollout and the update see the same policy
        c.backend.setup(c.policy.denoiser, params, OptimizerConfig(
            lr=t.lr, weight_decay=t.weight_decay, betas=(t.betas[0], t.betas[1]), eps=t.eps, grad_clip=t.grad_clip))
        self.group = Group(c.backend.rank, c.backend.world_size)
        self.copies = WeightCopies(weight_average(c.policy.denoiser, params, t.ema_decay, t.ema_every, t.ema_warmup,
                                                  t.ema_schedule, t.ema_repeats),
                                   lagged_weights(c.policy.denoiser, params, c.parts.objective.lag))
        if c.parts.objective.needs_reference:
            c.policy.place_reference(c.backend.place_frozen)

    def _open_run_dir(self, resume: bool) -> tuple[int, float]:
        """A new run writes its resolved recipe; a resumed one loads its newest complete checkpoint."""
        self.resumed = None
        if resume:
            self.resumed = runrecord.resume(self.dirs, self.recipe, self.group, self._load)
        elif self.group.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            runrecord.write_resolved(self.dirs, self.recipe)
        self.group.barrier()
        if self.group.main:
            write_runtime(self.dirs.runtime, self.group.size, self.c.backend.runtime())
        return (self.resumed.start, self.resumed.elapsed) if self.resumed else (0, 0.0)

    def _load(self, folder: Path) -> None:
        self.c.backend.load(folder)
        self.copies.load(folder)

    def _save_extra(self, directory: Path) -> None:
        """Written into each checkpoint beside the backend's files: the weight copies and the recipe."""
        self.copies.save(directory)
        runrecord.save_recipe(directory, self.recipe)

    # -- one iteration: the pipeline ---------------------------------------------------------------
    def iteration(self, it: int) -> dict[str, float]:
        t, c, parts, times = self.recipe.train, self.c, self.c.parts, {}
        gen = streams.iteration_generator(t.seed, it)
        prompts, trees = self._prompts(it, gen)
        cond = self.prompts.encode(prompts)
        with self._stage(times, "rollout"):
            plan = parts.plan(c.sampler.steps, it)
            shared = streams.shared_noise(t.seed, it, tuple(c.policy.latent_shape), len(prompts), plan.roots) \
                if t.init_same_noise else None
            with self.copies.lagged.sampling():  # the objective's lagged weights, when it samples with them
                ro = rollout(c.policy, c.sampler, plan, cond, max_batch=t.rollout_batch, init_noise=shared,
                             generator=streams.tree_generators(t.seed, it, trees), solvers=parts.solvers,
                             keep=parts.keep, on_step=lambda k: self.reporter.stage(f"rollout {k + 1}/{plan.steps}"))
        with self._stage(times, "reward"):
            scores, report = c.rewards.score(c.policy.decode(ro.final), [prompts[i] for i in ro.tree[-1].tolist()])
        with timed(times, "advantage"):
            scores, failed = impute_failed(ro, scores)
            adv = c.rewards.advantages(parts.advantage, parts.spec.advantage.entry, ro, scores, self.group)
            flat = zero_std_ratio(ro, c.rewards.total(scores), self.group)
            unit_ctx = UnitContext(it, streams.unit_generators(t.seed, it, trees), ~failed if failed.any() else None)
            units = parts.units(ro, adv, self._prune(it, ro, adv, failed), unit_ctx)
        with self._stage(times, "update"):
            stats = update(parts.learning_rule, LossContext(c.policy, c.sampler, ro, cond, self.copies.lagged.applied),
                           c.backend, units, self.update_cfg, gen, placeholder=parts.placeholder(ro, unit_ctx),
                           group=self.group, on_micro_batch=update_progress(self.reporter, len(units) * t.epochs),
                           on_optimizer_step=self.copies.after_step, before_optimizer_step=self.copies.before_step)
            self.copies.lagged.after_iteration()
        runrecord.check_finite_weights(c.backend.weights_finite(c.policy.trainable_parameters()), self.run_dir, it)
        return iteration_metrics(ro, report, failed, stats, times, group=self.group, lr=t.lr,
                                 unit=parts.objective.unit, memory=c.backend.memory(), zero_std_ratio=flat)

    def _prompts(self, it: int, gen: torch.Generator) -> tuple[list[str], range]:
        """The iteration's prompts (logged by rank 0) and this rank's share of them: whole trees, so
        that a group never spans ranks and advantages stay local."""
        n, per = len(self.c.train_prompts), self.recipe.train.prompts_per_iteration
        idx = torch.randperm(n, generator=gen)[:per] if per <= n else torch.randint(n, (per,), generator=gen)
        chosen = [self.c.train_prompts[i] for i in idx.tolist()]
        if self.group.main:
            with self.dirs.prompts.open("a") as fh:
                fh.write(json.dumps({"iteration": it, "prompts": chosen}) + "\n")
        mine = self.group.shard(len(chosen))
        return chosen[mine], range(mine.start, mine.stop)

    def _prune(self, it: int, ro: Any, adv: Any, failed: torch.Tensor) -> EdgeSet:
        """The pruners in order, then: a leaf without a score trains nothing but edges it shares."""
        t = self.recipe.train
        ctx = PruneContext(it, t.iterations, streams.pruner_generator(t.seed, it, self.group.rank),
                           gather=self.group.gather, rank=self.group.rank)
        edges = self.c.parts.prune(ro, adv, ctx)
        if failed.any():
            edges = EdgeSet([m & (ro.reduce_leaves(failed.float(), k + 1) < 1.0 - 1e-6)
                             for k, m in enumerate(edges.masks)])
        return edges

    @contextmanager
    def _stage(self, times: dict[str, float], name: str) -> Iterator[None]:
        self.reporter.stage(name)
        with timed(times, name):
            yield

    # -- the run -----------------------------------------------------------------------------------
    def _maybe_evaluate(self, done: int, elapsed: float, force: bool = False) -> None:
        """Evaluate after `done` iterations and `elapsed` training seconds when the schedule (or `force`) says so."""
        due, mark = self.schedule.due(done, elapsed, force)
        if not due or not self.c.eval_sets:
            return
        self.reporter.stage("evaluate")
        start = time.perf_counter()
        with self.copies.ema.applied():  # the averaged weights, when the recipe keeps an average
            ev = self.evaluator.evaluate(done)
        ev["time/evaluation"], ev["time/training"] = time.perf_counter() - start, elapsed
        if mark is not None:
            ev["time/mark"] = mark  # the training-time mark (minutes) this evaluation is for
        self.log.write(done, "eval", ev)
        self.reporter.evaluation(done, ev)

    def run(self, *, resume: bool = False) -> dict[str, float]:
        start, elapsed = self.setup(resume=resume)
        try:
            return self._loop(start, elapsed)
        finally:
            self.log.close()
            self.c.backend.close()

    def _loop(self, start: int, elapsed: float) -> dict[str, float]:
        t, plan = self.recipe.train, self.c.plan
        self.log.write(start, "plan", {"leaves_per_tree": plan.leaves, "rollout_forwards_per_tree": plan.rollout_forwards,
                                        "edges_per_tree": plan.edges})
        if self.resumed is not None:  # when and from where the run was resumed, and what it changed
            self.log.write(start, "resume", self.resumed.record())
        budget, last, done, reason = t.time_budget * 60.0, {}, start, "iterations"
        self.reporter.start(t.iterations, start, budget, elapsed)
        self.schedule = Schedule(self.recipe.eval, t.iterations, elapsed)
        if start < t.iterations:  # a fresh run evaluates the base; a resumed one repeats its checkpoint's evaluation
            self._maybe_evaluate(start, elapsed, force=start == 0)
        for it in range(start, t.iterations):
            if budget and elapsed >= budget:
                reason = "time_budget"
                break
            last = self.iteration(it)
            # rank 0's clock decides the time budget, so that every rank stops at the same iteration
            elapsed = last["time/elapsed"] = self.group.broadcast(elapsed + last["time/iteration"])
            self.log.write(it, "train", last)
            self.reporter.iteration(it, last)
            done, over = it + 1, bool(budget) and elapsed >= budget
            if done % t.checkpoint_every == 0 or done == t.iterations or over:
                self.reporter.stage("checkpoint")
                checkpoint.save(self.run_dir, self.c.backend, done, t.keep_checkpoints, {"elapsed": elapsed},
                                group=self.group, also=self._save_extra)
            self._maybe_evaluate(done, elapsed, force=over)
            if over:
                reason = "time_budget"
                break
        if start == done and start > 0:  # resumed a finished run: its last evaluation
            self._maybe_evaluate(start, elapsed, force=True)
        if self.group.main:
            self.dirs.finished.write_text(json.dumps({"iterations": done, "reason": reason, "elapsed": elapsed}) + "\n")
        return last
