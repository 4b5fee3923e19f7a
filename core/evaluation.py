"""Evaluation: every evaluation set sampled deterministically (``[eval] solver``) from fixed noise,
scored, logged.

The noise of each set is drawn once from ``eval.seed`` (never used in training), so every
evaluation of a run, and of every run with the same ``[eval]`` and prompts, sees the same images'
starting points. With several ranks each rank evaluates an equal share and the scores are gathered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .config import EvalConfig
from .dist import Group
from .images import caption_grid, caption_video_grid, gif_bytes, pil_to_tensor
from .objective import Keep
from .policy import Conditioning, Policy
from .rollout import chunked, rollout
from .rundir import RunDir
from .sampler import EulerODE, Sampler
from .scoring import Rewards
from .solver import Solver
from .stats import mean_ci
from .tree import TreePlan


class Schedule:
    """When to evaluate: every ``eval.every`` iterations, or after the iteration whose training clock
    first reaches each multiple of ``eval.every_minutes``; always at the last iteration."""

    def __init__(self, cfg: EvalConfig, iterations: int, elapsed: float = 0.0) -> None:
        self.every, self.period, self.iterations = cfg.every, cfg.every_minutes * 60.0, iterations
        self.marks = self._reached(elapsed)  # marks already passed (a resumed run's)

    @property
    def active(self) -> bool:
        return bool(self.every or self.period)

    def _reached(self, elapsed: float) -> int:
        return int(elapsed // self.period) if self.period else 0

    def due(self, done: int, elapsed: float, force: bool = False) -> tuple[bool, float | None]:
        """Whether to evaluate after `done` iterations and `elapsed` training seconds, and the mark in
        minutes it is for (None when not a mark's); a mark's evaluation is recorded as made."""
        if not self.active:
            return False, None
        if self.period:
            mark = self._reached(elapsed)
            if mark > self.marks or done == 0:
                self.marks = mark
                return True, mark * self.period / 60.0
            return force or done == self.iterations, None
        return force or done % self.every == 0 or done == self.iterations, None


class Evaluator:
    """Evaluates the policy on the recipe's evaluation sets (``[eval]``)."""

    def __init__(self, cfg: EvalConfig, sets: dict[str, list[str]], latent_shape: tuple[int, ...], *,
                 policy: Policy, sampler: Sampler, solver: Solver, rewards: Rewards,
                 encode: Callable[[list[str]], Conditioning], group: Group, run_dir: RunDir, log: Any) -> None:
        self.cfg, self.sets, self.policy, self.rewards = cfg, sets, policy, rewards
        self.encode, self.group, self.run_dir, self.log = encode, group, run_dir, log
        self.steps = cfg.steps or sampler.steps
        # the σ grid (the rollout's, at the evaluation's steps); the solver of every step
        self.grid, self.solvers = EulerODE(self.steps, sampler.shift, sampler.times), {"": solver}
        gen = torch.Generator().manual_seed(cfg.seed)
        self.noise = {name: torch.randn((len(p), *latent_shape), generator=gen) for name, p in sets.items()}

    def fingerprint(self) -> dict[str, str]:
        """SHA-256 of each evaluation set's prompts and noise, so that runs can be checked for equal
        evaluations; written to ``eval/fingerprint.json``."""
        out = {}
        for name, noise in self.noise.items():
            h = hashlib.sha256(noise.numpy().tobytes())
            h.update("\n".join(self.sets[name]).encode())
            out[name] = h.hexdigest()
        self.run_dir.fingerprint.parent.mkdir(exist_ok=True)
        self.run_dir.fingerprint.write_text(json.dumps(out, indent=1) + "\n")
        return out

    def evaluate(self, iteration: int) -> dict[str, float]:
        """Means and 95% intervals of every reward and component per set; saves the sample grid and
        the per-image scores (``eval/iter_N.pt``)."""
        metrics: dict[str, float] = {}
        per_image: dict[str, dict[str, list[float]]] = {}
        grid_images, grid_captions = [], []
        for name, prompts in self.sets.items():
            report, picked, take = self._evaluate_set(name, prompts)
            per_image[name] = {k: v.tolist() for k, v in report.items()}
            for key, values in report.items():
                metrics[f"{name}/{key}"], metrics[f"{name}/{key}/ci95"] = mean_ci(values)
            if self.cfg.grid_images:
                grid_images.append(picked)
                grid_captions += [f"[{name}] {prompts[i]}" for i in take]
        if grid_images and self.cfg.grid_images and self.group.main:
            self._save_grid(iteration, torch.cat(grid_images), grid_captions)
        if self.group.main:
            self.run_dir.eval_scores(iteration).parent.mkdir(exist_ok=True)
            path = self.run_dir.eval_scores(iteration)
            tmp = path.with_name(path.name + ".tmp")
            torch.save(per_image, tmp)
            tmp.replace(path)  # renamed whole: never a partial file
        return metrics

    def _evaluate_set(self, name: str, prompts: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray]:
        """Every rank's scores of one set, and the grid's picks among its images."""
        # each rank evaluates an equal share (the last shares padded with the first image, so that
        # every rank runs the same number of forwards); the scores are gathered
        n, per = len(prompts), -(-len(prompts) // self.group.size)
        own = [i for i in range(self.group.rank * per, (self.group.rank + 1) * per) if i < n]
        index = own + [0] * (per - len(own))
        plan = TreePlan((1,) * self.steps, (1.0,) * self.steps, (False,) * self.steps)
        finals = []
        for sl in chunked(per, self.cfg.batch):
            part = index[sl]
            ro = rollout(self.policy, self.grid, plan, self.encode([prompts[i] for i in part]),
                         generator=torch.Generator(), max_batch=self.cfg.batch, init_noise=self.noise[name][part],
                         solvers=self.solvers, keep=Keep())
            finals.append(self.policy.decode(ro.final))
        images = torch.cat(finals) if finals else torch.zeros(0)
        _, report = self.rewards.score(images, [prompts[i] for i in index])
        valid = self.group.gather(torch.arange(per) < len(own))
        report = {k: self.group.gather(v)[valid] for k, v in report.items()}
        take = np.linspace(0, n - 1, min(self.cfg.grid_images, n)).round().astype(int)
        picked: torch.Tensor = images[:0]
        if self.cfg.grid_images:
            chosen = set(take.tolist())
            mine = [j for j, i in enumerate(own) if i in chosen]
            picked = self.group.gather(images[mine] if mine else images[:0])
        return report, picked, take

    def _save_grid(self, iteration: int, images: torch.Tensor, captions: list[str]) -> None:
        """The captioned sample grid (``samples/eval_N.png``; videos also as an animated ``.gif``)."""
        sel = np.linspace(0, len(images) - 1, min(self.cfg.grid_images, len(images))).round().astype(int)
        chosen = [captions[i] for i in sel]
        self.run_dir.sample_grid(iteration).parent.mkdir(exist_ok=True)
        if images.dim() == 5:  # videos: an animated grid, and its middle frame as the still
            frames = caption_video_grid(images[sel], chosen)
            gif = gif_bytes(frames, self.policy.fps or 8)
            self.run_dir.sample_grid(iteration, ".gif").write_bytes(gif)
            self.log.animation("eval/videos", gif, frames[0].width, frames[0].height, iteration,
                               path=self.run_dir.sample_grid(iteration, ".gif"))
            grid = frames[len(frames) // 2]
        else:
            grid = caption_grid(images[sel], chosen)
        grid.save(self.run_dir.sample_grid(iteration))
        self.log.image("eval/samples", pil_to_tensor(grid), iteration)
