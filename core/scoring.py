"""Rewards on the leaves, their aggregation into advantages, and the reward metrics of an iteration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantage import AdvantageEstimator
from .config import RewardSpec
from .dist import Group
from .errors import PluginError
from .registry import Entry, attributed
from .reward import RewardModel
from .tree import Advantages, Rollout
from .update import UpdateStats


@dataclass
class Rewards:
    """The recipe's rewards (each with its spec: label, weight, plugin) and how they combine."""

    specs: list[RewardSpec]
    models: list[RewardModel]
    aggregation: str = "sum"

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.specs]

    def score(self, images: torch.Tensor, prompts: list[str]) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Per-reward scores (N,) fp32 and every reported component, keyed ``label/component``."""
        scores, report = [], {}
        for spec, model in zip(self.specs, self.models, strict=True):
            with attributed(spec.entry, "score()"):
                out = model.score(images, prompts)
                shape = tuple(out.scores.shape) if isinstance(out.scores, torch.Tensor) else type(out.scores).__name__
            if shape != (images.shape[0],):
                raise PluginError(f"reward {spec.label!r} from plugin {spec.entry.plugin!r} ({spec.entry.distribution}) "
                                  f"returned scores of shape {shape} for {images.shape[0]} images; a reward gives one "
                                  "score per image (grpo.testing.check_reward checks it)")
            scores.append(out.scores.float())
            report[spec.label] = out.scores.float()
            for comp, values in out.components.items():
                report[f"{spec.label}/{comp}"] = values.float()
        return scores, report

    def total(self, scores: list[torch.Tensor]) -> torch.Tensor:
        """(N,) the weighted sum of the rewards."""
        return sum(s.weight * v for s, v in zip(self.specs, scores, strict=True))

    def advantages(self, estimator: AdvantageEstimator, entry: Entry, rollout: Rollout,
                   scores: list[torch.Tensor], group: Group = Group()) -> Advantages:
        """``sum``: the estimator on the weighted sum of the rewards; ``advantage``: the weighted sum
        of the estimator on each reward. `entry` names the estimator's plugin in a failure; an
        estimator that ``uses_all_ranks`` is given `group`'s gather."""
        weights = [s.weight for s in self.specs]

        def estimate(rewards: torch.Tensor) -> Advantages:
            with attributed(entry, "computing advantages"):
                if estimator.uses_all_ranks:
                    return estimator(rollout, rewards, group.gather)
                return estimator(rollout, rewards)

        if self.aggregation == "sum":
            return estimate(self.total(scores))
        per = [estimate(s) for s in scores]
        return Advantages([sum(w * a.values[k] for w, a in zip(weights, per, strict=True))
                           for k in range(rollout.steps)])


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


def zero_std_ratio(rollout: Rollout, total: torch.Tensor, group: Group) -> float:
    """The share of every rank's trees whose leaves all got the same total reward (std below 1e-6):
    groups that carry no advantage at all."""
    per_tree = total.float().reshape(-1, rollout.plan.leaves)
    flat = group.gather((per_tree.std(dim=1, correction=0) < 1e-6).float())
    return float(flat.mean()) if flat.numel() else 0.0


def reward_metrics(report: dict[str, torch.Tensor], failed: torch.Tensor, group: Group) -> dict[str, float]:
    """Means (and, for each reward itself, the std) over every rank's leaves; failed scores left out."""
    metrics: dict[str, float] = {}
    for key, values in report.items():
        values = group.gather(values)
        ok = values[torch.isfinite(values)]
        metrics[f"reward/{key}/mean"] = float(ok.mean()) if ok.numel() else float("nan")
        if "/" not in key:
            metrics[f"reward/{key}/std"] = float(ok.std()) if ok.numel() > 1 else 0.0
    metrics["reward/failed"] = float(group.gather(failed.float()).sum())
    return metrics


def iteration_metrics(rollout: Rollout, report: dict[str, torch.Tensor], failed: torch.Tensor, stats: UpdateStats,
                      times: dict[str, float], *, group: Group, lr: float, unit: str, memory: dict[str, int],
                      zero_std_ratio: float = 0.0) -> dict[str, float]:
    """Everything an iteration logs: rewards (with the share of groups whose rewards are all equal),
    the update's statistics (the objective's, and the schedule's: ``update/trained_<unit>``,
    ``update/skipped_<unit>``, steps, gradient norm), costs of the whole iteration (every rank's
    trees), this rank's memory (MiB) and the time of each stage."""
    metrics = reward_metrics(report, failed, group)
    metrics["reward/zero_std_ratio"] = zero_std_ratio
    metrics.update({f"update/{k}": float(v) for k, v in stats.metrics.items()})
    metrics.update({"update/grad_norm": stats.grad_norm, "update/optimizer_steps": float(stats.optimizer_steps),
                    f"update/trained_{unit}": float(stats.trained), f"update/skipped_{unit}": float(stats.skipped),
                    "update/skipped_steps": float(stats.skipped_steps)})
    metrics["update/lr"] = lr
    metrics["cost/rollout_forwards"] = float(sum(s.shape[0] for s in rollout.states[:-1])) * group.size
    metrics[f"cost/trained_{unit}"] = float(stats.trained)
    metrics["cost/leaves"] = float(rollout.states[-1].shape[0]) * group.size
    metrics.update({f"memory/{k}": v / 2**20 for k, v in memory.items()})
    metrics.update({f"time/{k}": v for k, v in times.items()})
    metrics["time/iteration"] = sum(times.values())
    return metrics
