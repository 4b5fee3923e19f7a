"""Head-to-head comparison of finished runs: one table, curves on three x-axes, samples side by side.

Runs are grouped by recipe (their ``label``); a recipe run with several seeds is summarised by the
mean over seeds and a Student-t 95% interval. With one seed the interval is the image-level one of
that run's evaluation, and the table says so.

Everything here reads run directories only, so ``grpo compare --from`` renders the same report
from saved runs as the live comparison did.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from grpo.core.errors import UserError
from grpo.core.rundir import (
    FINISHED,
    METRICS,
    RESOLVED,
    RUNTIME,
    SAMPLES,
    TENSORBOARD,
    RunDir,
    describe_machine,
)
from grpo.core.runlog import read_metrics
from grpo.core.tomlfile import tomllib

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError("t quantile needs at least one degree of freedom")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def seed_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval of per-seed values (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t_quantile_975(n - 1) * math.sqrt(var / n)


def trained_units(record: dict[str, Any]) -> float:
    """The units an iteration's update trained (``update/trained_<unit>``, else ``cost/trained_<unit>``:
    edges for the clipped ratio, samples for an objective on the forward process)."""
    for prefix in ("update/trained_", "cost/trained_"):
        found = [v for k, v in record.items() if k.startswith(prefix)]
        if found:
            return float(found[0])
    return 0.0


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    name: str
    label: str
    seed: int
    run_dir: Path
    iterations: int
    evals: list[dict] = field(repr=False)
    train: list[dict] = field(repr=False)
    finished: bool
    settings: dict = field(default_factory=dict, repr=False)  # the run's resolved recipe
    machine: str | None = None  # where it ran (runtime.json), when the run recorded it

    @classmethod
    def load(cls, run_dir: Path, label: str | None = None) -> RunSummary:
        run_dir = Path(run_dir)
        for required in (METRICS, RESOLVED):
            if not (run_dir / required).is_file():
                raise UserError(f"{str(run_dir)!r} is not a finished run directory (no {required})",
                                where="--from", hint="give --out directories of `grpo run` or runs/<name> of a comparison")
        resolved = tomllib.loads((run_dir / RESOLVED).read_text())
        records = read_metrics(run_dir)
        runtime = json.loads((run_dir / RUNTIME).read_text()) if (run_dir / RUNTIME).is_file() else {}
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        return cls(
            name=run_dir.name,
            label=label or re.sub(r"-seed\d+$", "", run_dir.name),
            seed=int(resolved.get("train", {}).get("seed", 0)),
            run_dir=run_dir,
            iterations=len(train),
            evals=evals,
            train=train,
            finished=(run_dir / FINISHED).is_file(),
            settings=resolved,
            machine=describe_machine(runtime),
        )

    # -- per-run quantities ------------------------------------------------------------------------
    def clock(self) -> dict[int, float]:
        """Cumulative training seconds (evaluations excluded) after each number of iterations."""
        out, elapsed = {0: 0.0}, 0.0
        for r in self.train:
            elapsed = r.get("time/elapsed", elapsed + r.get("time/iteration", 0.0))
            out[r["iteration"] + 1] = elapsed
        return out

    def forwards(self) -> dict[int, float]:
        """Cumulative model forwards (rollout forwards + update forwards, one per trained unit and epoch:
        an edge for the clipped ratio, a re-noised sample for an objective on the forward process)."""
        out, total = {0: 0.0}, 0.0
        for r in self.train:
            total += r.get("cost/rollout_forwards", 0.0) + trained_units(r)
            out[r["iteration"] + 1] = total
        return out

    def gain_curve(self, key: str, axis: str = "minutes") -> list[tuple[float, float]]:
        """(training minutes or cumulative forwards, score − the base's score) at each evaluation."""
        xs = self.clock() if axis == "minutes" else self.forwards()
        scale = 60.0 if axis == "minutes" else 1.0
        pts = [(xs.get(r["iteration"], float("nan")) / scale, r[key]) for r in self.evals if key in r]
        return [(x, y - pts[0][1]) for x, y in pts] if pts else []

    def per_image(self, key: str, which: int) -> list[float] | None:
        """Per-image scores of the `which`-th evaluation (``eval/iter_N.pt``), when saved."""
        from grpo.analysis.report import load_eval

        set_name, reward = key.split("/")
        path = RunDir(self.run_dir).eval_scores(self.evals[which]["iteration"])
        if not path.is_file():
            return None
        return load_eval(self.run_dir, self.evals[which]["iteration"]).get(set_name, {}).get(reward)

    def mean_train(self, key: str) -> float:
        vals = [r[key] for r in self.train if key in r]
        return sum(vals) / len(vals) if vals else float("nan")

    def per_leaf(self, key: str) -> float:
        """`key` summed over the iterations, per leaf (``cost/trained_edges``: the objective's units)."""
        num = sum(trained_units(r) if key == "cost/trained_edges" else r.get(key, 0.0) for r in self.train)
        den = sum(r.get("cost/leaves", 0.0) for r in self.train)
        return num / den if den else float("nan")

    def time_share(self, stage: str) -> float:
        total = sum(r.get("time/iteration", 0.0) for r in self.train)
        return sum(r.get(f"time/{stage}", 0.0) for r in self.train) / total if total else float("nan")

    def training_seconds(self) -> float:
        return self.clock()[self.iterations] if self.iterations else 0.0

    def evaluation_seconds(self) -> float:
        return sum(r.get("time/evaluation", 0.0) for r in self.evals)


def main_measures(runs: list[RunSummary]) -> list[tuple[str, str]]:
    """(set, reward) pairs of every reward's main score, held-out sets first."""
    found: set[tuple[str, str]] = set()
    for run in runs:
        for r in run.evals:
            for key in r:
                parts = key.split("/")
                if len(parts) == 2 and parts[0] not in ("time",) and key != "iteration":
                    found.add((parts[0], parts[1]))
    return sorted(found, key=lambda p: (p[0] != "held-out", p[0], p[1]))


def time_to_target(points: list[tuple[float, float]], target: float) -> float | None:
    """The first x at which a curve of (x, gain) reaches `target`, linearly interpolated between
    evaluations; None when it never does."""
    for i, (x, y) in enumerate(points):
        if y >= target:
            if i == 0:
                return x
            x0, y0 = points[i - 1]
            return x0 + (target - y0) / (y - y0) * (x - x0)
    return None


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a − b over paired values (same images and noise) and its normal 95% half-width."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    return mean, 1.96 * sd / math.sqrt(n)


@dataclass
class Reach:
    """When the runs of one recipe first reached the target gain (the seeds that did)."""

    minutes: tuple[float, float]  # mean and half-width over the seeds that reached it
    forwards: tuple[float, float]
    reached: int
    seeds: int
    budget_minutes: float  # the longest training of the recipe's runs (what "not reached" means)


def reach(members: list[RunSummary], key: str, target: float) -> Reach:
    minutes, forwards = [], []
    for m in members:
        t = time_to_target(m.gain_curve(key, "minutes"), target)
        f = time_to_target(m.gain_curve(key, "forwards"), target)
        if t is not None and f is not None:
            minutes.append(t)
            forwards.append(f)
    nan = (float("nan"), float("nan"))
    return Reach(seed_interval(minutes) if minutes else nan, seed_interval(forwards) if forwards else nan,
                 len(minutes), len(members), max(m.training_seconds() for m in members) / 60)


@dataclass
class Row:
    label: str
    seeds: list[int]
    iterations: float
    finals: dict[str, tuple[float, float]]  # "set/reward" -> (mean, half-width)
    gains: dict[str, tuple[float, float]]  # the same, of final − first evaluation
    interval: str  # how the half-width was computed
    sec_per_iteration: float
    forwards_per_leaf: float
    edges_per_leaf: float
    training_minutes: float
    shares: dict[str, float]
    reach: Reach | None = None  # time to the target gain (the first measure), when there is a target


def default_target(runs: list[RunSummary], measures: list[tuple[str, str]]) -> float | None:
    """The first recipe's mean final gain in the first measure (None when it has no positive gain)."""
    if not measures:
        return None
    key, first = "/".join(measures[0]), runs[0].label
    gains = [r.gain_curve(key)[-1][1] for r in runs if r.label == first and r.gain_curve(key)]
    gain = sum(gains) / len(gains) if gains else float("nan")
    return gain if gain > 0 else None


def summarise(runs: list[RunSummary], target: float | None = None) -> tuple[list[Row], list[tuple[str, str]]]:
    """One row per recipe; time to `target` (default: the first recipe's final gain) in the first measure."""
    measures = main_measures(runs)
    target = default_target(runs, measures) if target is None else target
    groups: dict[str, list[RunSummary]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    rows = []
    for label, members in groups.items():
        members.sort(key=lambda r: r.seed)
        finals, gains = {}, {}
        for set_name, reward in measures:
            key = f"{set_name}/{reward}"
            with_key = [m for m in members if m.evals and key in m.evals[-1]]
            if not with_key:
                continue
            values = [m.evals[-1][key] for m in with_key]
            deltas = [m.evals[-1][key] - m.evals[0][key] for m in with_key]
            if len(with_key) == 1:
                finals[key] = (values[0], with_key[0].evals[-1].get(f"{key}/ci95", 0.0))
                only = with_key[0]
                a, b = only.per_image(key, -1), only.per_image(key, 0)
                gains[key] = paired_interval(a, b) if a and b and len(a) == len(b) else (deltas[0], float("nan"))
            else:
                finals[key] = seed_interval(values)
                gains[key] = seed_interval(deltas)
        n = len(members)
        rows.append(Row(
            label=label,
            seeds=[m.seed for m in members],
            iterations=sum(m.iterations for m in members) / n,
            finals=finals,
            gains=gains,
            interval="over seeds (Student t)" if n > 1 else "image-level (one seed)",
            sec_per_iteration=sum(m.mean_train("time/iteration") for m in members) / n,
            forwards_per_leaf=sum(m.per_leaf("cost/rollout_forwards") for m in members) / n,
            edges_per_leaf=sum(m.per_leaf("cost/trained_edges") for m in members) / n,
            training_minutes=sum(m.training_seconds() for m in members) / n / 60,
            shares={s: sum(m.time_share(s) for m in members) / n for s in ("rollout", "reward", "update")},
            reach=reach(members, "/".join(measures[0]), target) if measures and target is not None else None,
        ))
    return rows, measures


def gain_difference(runs: list[RunSummary], label: str, reference: str, key: str) -> tuple[float, float, str]:
    """Final gain of `label` minus that of `reference`: paired by seed over their common seeds, or,
    with one seed, image by image (both runs' evaluations use the same images and noise)."""
    mine = {r.seed: r for r in runs if r.label == label and r.gain_curve(key)}
    ref = {r.seed: r for r in runs if r.label == reference and r.gain_curve(key)}
    common = sorted(set(mine) & set(ref))
    if not common:
        return float("nan"), float("nan"), "no common seed"
    if len(common) > 1:
        d = [mine[s].gain_curve(key)[-1][1] - ref[s].gain_curve(key)[-1][1] for s in common]
        return (*seed_interval(d), f"paired by seed, {len(common)} seeds")
    a, b = mine[common[0]].per_image(key, -1), ref[common[0]].per_image(key, -1)
    if a and b and len(a) == len(b):
        return (*paired_interval(a, b), "paired by image, one seed")
    d = mine[common[0]].gain_curve(key)[-1][1] - ref[common[0]].gain_curve(key)[-1][1]
    return d, float("nan"), "one seed"


def _pm(pair: tuple[float, float], digits: int = 1) -> str:
    mean, half = pair
    return f"{mean:.{digits}f}" if math.isnan(half) or half == 0 else f"{mean:.{digits}f} ± {half:.{digits}f}"


def headline(runs: list[RunSummary], rows: list[Row], measures: list[tuple[str, str]],
             target: float | None = None) -> str:
    """The outcome, one sentence per recipe against the first one: its time to the target gain and its
    final gain's difference, each with its 95% interval, whichever way they go."""
    if not rows or not measures:
        return ""
    key, ref = "/".join(measures[0]), rows[0]
    tgt = target if target is not None else default_target(runs, measures)
    source = "the given target" if target is not None else f"{ref.label}'s final gain"
    out = []
    if tgt is None:
        out.append(f"{ref.label}'s final gain in {key} is not positive, so there is no target gain to time.")
    for row in rows[1:]:
        parts = []
        if tgt is not None and row.reach and ref.reach:
            a, b = row.reach, ref.reach
            if a.reached and b.reached:
                parts.append(f"{row.label} reached a gain of {tgt:+.3f} in {key} ({source}) after {_pm(a.minutes)} "
                             f"training minutes ({a.reached}/{a.seeds} seeds), against {_pm(b.minutes)} for {ref.label} "
                             f"({b.reached}/{b.seeds} seeds): {a.minutes[0] / b.minutes[0]:.2f}× the time"
                             if b.minutes[0] > 0 else "")
            elif b.reached:
                parts.append(f"{row.label} did not reach a gain of {tgt:+.3f} in {key} ({source}) within "
                             f"{a.budget_minutes:.1f} training minutes, where {ref.label} took {_pm(b.minutes)} "
                             f"({b.reached}/{b.seeds} seeds)")
            elif a.reached:
                parts.append(f"{row.label} reached a gain of {tgt:+.3f} in {key} ({source}) after {_pm(a.minutes)} "
                             f"training minutes ({a.reached}/{a.seeds} seeds), which {ref.label} did not reach "
                             f"within {b.budget_minutes:.1f}")
            else:
                parts.append(f"Neither {row.label} nor {ref.label} reached a gain of {tgt:+.3f} in {key} ({source})")
        d, h, how = gain_difference(runs, row.label, ref.label, key)
        if not math.isnan(d):
            verdict = ("an interval that includes 0: no difference can be concluded" if math.isnan(h) or abs(d) <= h
                       else "an interval above 0" if d > 0 else "an interval below 0")
            lead = "its" if parts and parts[0] else row.label + "'s"
            parts.append(f"{lead} final gain differs from {ref.label}'s by {_signed(d)}"
                         + ("" if math.isnan(h) else f" ± {h:.3f}") + f" ({how}), {verdict}")
        parts = [x for x in parts if x]
        if parts:
            out.append("; ".join(parts) + ".")
    return " ".join(out)


def _signed(x: float) -> str:
    """A difference with its sign, to three decimals; one that rounds to zero is written 0.000."""
    return "0.000" if round(x, 3) == 0 else f"{x:+.3f}"


def _fmt(pair: tuple[float, float]) -> str:
    mean, half = pair
    return f"{mean:.3f}" if math.isnan(half) else f"{mean:.3f} ± {half:.3f}"


def _reach_cells(r: Reach | None) -> list[str]:
    if r is None:
        return []
    if not r.reached:
        return [f"not in {r.budget_minutes:.1f} (0/{r.seeds})", f"– (0/{r.seeds})"]
    m, f = r.minutes, r.forwards
    tail = f" ({r.reached}/{r.seeds})"
    return [(f"{m[0]:.1f}" if r.reached == 1 else f"{m[0]:.1f} ± {m[1]:.1f}") + tail,
            (f"{f[0]:.3g}" if r.reached == 1 else f"{f[0]:.3g} ± {f[1]:.2g}") + tail]


def table_rows(rows: list[Row], measures: list[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table (shared by the markdown and HTML reports)."""
    keys = [f"{s}/{r}" for s, r in measures]
    reached = any(row.reach is not None for row in rows)
    header = ["recipe", "seeds", "iterations", *[f"{k} (final)" for k in keys], *[f"{k} (gain)" for k in keys[:1]],
              *(["min to target", "forwards to target"] if reached else []),
              "s / iteration", "rollout forwards / leaf", "trained edges / leaf", "training min",
              "rollout %", "reward %", "update %"]
    cells = []
    for row in rows:
        cells.append([
            row.label, ",".join(map(str, row.seeds)),
            f"{row.iterations:.0f}" if row.iterations == int(row.iterations) else f"{row.iterations:.1f}",
            *[_fmt(row.finals[k]) if k in row.finals else "–" for k in keys],
            *[_fmt(row.gains[k]) if k in row.gains else "–" for k in keys[:1]],
            *(_reach_cells(row.reach) if reached else []),
            f"{row.sec_per_iteration:.1f}", f"{row.forwards_per_leaf:.2f}", f"{row.edges_per_leaf:.2f}",
            f"{row.training_minutes:.1f}",
            *[f"{100 * row.shares[s]:.0f}" for s in ("rollout", "reward", "update")],
        ])
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------------
AXES = {
    "iteration": ("iteration", lambda run: {i: float(i) for i in run.clock()}),
    "seconds": ("training seconds (evaluations excluded)", RunSummary.clock),
    "forwards": ("cumulative model forwards (rollout + update)", RunSummary.forwards),
}


def plot(runs: list[RunSummary], measures: list[tuple[str, str]], x_axis: str, out: Path) -> None:
    """Evaluation scores of every run against `x_axis`; one colour per recipe, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xlabel, xs_of = AXES[x_axis]
    labels = list(dict.fromkeys(r.label for r in runs))
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 3.4), squeeze=False)
    for j, (set_name, reward) in enumerate(measures):
        ax, key = axes[0][j], f"{set_name}/{reward}"
        for run in runs:
            xs_map = xs_of(run)
            pts = [(xs_map.get(r["iteration"], float("nan")), r[key], r.get(f"{key}/ci95", 0.0))
                   for r in run.evals if key in r]
            if not pts:
                continue
            xs, ys, cis = zip(*pts, strict=True)
            seeds = sum(1 for r in runs if r.label == run.label)
            ax.plot(xs, ys, marker="o", markersize=3, color=colours[run.label],
                    label=run.label if seeds == 1 else f"{run.label} (seed {run.seed})",
                    alpha=1.0 if seeds == 1 else 0.6)
            if seeds == 1:
                ax.fill_between(xs, [y - c for y, c in zip(ys, cis, strict=True)],
                                [y + c for y, c in zip(ys, cis, strict=True)], color=colours[run.label], alpha=0.15)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_gains(runs: list[RunSummary], key: str, target: float | None, out: Path) -> None:
    """Each run's gain over the base in `key` against training minutes, with the target gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r.label for r in runs))
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    seen: set[str] = set()
    for run in runs:
        pts = run.gain_curve(key, "minutes")
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3, color=colours[run.label], alpha=0.75,
                label=None if run.label in seen else run.label)
        seen.add(run.label)
    if target is not None:
        ax.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:+.3f}")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("training minutes (evaluations excluded)", fontsize=8)
    ax.set_title(f"gain over the base in {key} (one line per seed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def samples_side_by_side(runs: list[RunSummary], out: Path) -> bool:
    """The base model's and each recipe's final evaluation grid (first seed), same prompts and noise."""
    panels: list[tuple[str, Path]] = []
    firsts = {}
    for run in sorted(runs, key=lambda r: r.seed):
        firsts.setdefault(run.label, run)
    for label, run in firsts.items():
        grids = sorted((run.run_dir / SAMPLES).glob("eval_*.png"))
        if not grids:
            continue
        if not panels:
            panels.append(("base model (iteration 0)", grids[0]))
        panels.append((f"{label}: iteration {int(grids[-1].stem.split('_')[1])}", grids[-1]))
    if not panels:
        return False
    images = [Image.open(p).convert("RGB") for _, p in panels]
    pad = 24
    width = sum(im.width for im in images) + pad * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images) + pad), (255, 255, 255))
    draw, font, x = ImageDraw.Draw(canvas), ImageFont.load_default(), 0
    for (title, _), im in zip(panels, images, strict=True):
        canvas.paste(im, (x, pad))
        draw.text((x + 4, 6), title, fill=(0, 0, 0), font=font)
        x += im.width + pad
    canvas.save(out)
    return True


def collect_tensorboard(runs: list[RunSummary], out: Path) -> None:
    """One TensorBoard log directory with every run under its own name."""
    for run in runs:
        src = run.run_dir / TENSORBOARD
        if src.is_dir():
            dest = out / run.name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(src, dest)


# -- the report ------------------------------------------------------------------------------------
FIGURES = [("curves_iteration.png", "against iteration"), ("curves_seconds.png", "against training seconds"),
           ("curves_forwards.png", "against cumulative model forwards"),
           ("gains_minutes.png", "gain over the base against training minutes, with the target gain")]


def differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted paths where two resolved recipes differ, with both values. Of a component whose ``use``
    differs, only ``use`` and the options both components have are compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        if "use" in a and "use" in b and a["use"] != b["use"]:
            keys = ["use", *[k for k in keys if k != "use" and a.get(k) is not None and b.get(k) is not None]]
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    return [] if a == b else [(path, a, b)]


# what compared recipes are expected to differ in, and is not listed as a difference
ALGORITHM = ("strategy", "train.seed", "parts", "provenance")


def setting_differences(runs: list[RunSummary]) -> list[str]:
    """Settings (besides the strategy and the seed) in which a recipe's runs differ from the first recipe's."""
    firsts: dict[str, RunSummary] = {}
    for run in runs:
        firsts.setdefault(run.label, run)
    labels = list(firsts)
    return [f"{label}: {where} = {b!r} (against {a!r})" for label in labels[1:]
            for where, a, b in differences(firsts[labels[0]].settings, firsts[label].settings)
            if not where.startswith(ALGORITHM)]


def machine_note(runs: list[RunSummary]) -> str | None:
    """Where the runs were measured: one machine, or the runs of each when they differ (their training
    times are then not comparable). Runs that did not record their machine are named as such."""
    machines: dict[str, list[str]] = {}
    for r in runs:
        machines.setdefault(r.machine or "", []).append(r.name)
    unrecorded = machines.pop("", [])
    if not machines:
        return None
    tail = f" ({', '.join(unrecorded)}: not recorded)" if unrecorded else ""
    if len(machines) == 1:
        return f"Machine: {next(iter(machines))}{tail}."
    return ("Runs measured on different machines or thread counts, so their training times are not comparable: "
            + "; ".join(f"{', '.join(names)} on {m}" for m, names in machines.items()) + tail + ".")


def write(runs: list[RunSummary], out: Path, *, title: str = "Comparison",
          target: float | None = None) -> tuple[list[Row], list[tuple[str, str]], str]:
    """Write report.md, report.html (self-contained), the plots and tensorboard/ into `out`; return the
    table's rows, its measures and the outcome sentence, for printing."""
    if not runs:
        raise UserError("no runs to compare", hint="give recipes to run, or --from run directories")
    if not any(r.evals for r in runs):
        raise UserError("none of the runs has an evaluation", hint="set [eval] every > 0")
    out.mkdir(parents=True, exist_ok=True)
    rows, measures = summarise(runs, target)
    lead = headline(runs, rows, measures, target)
    header, cells = table_rows(rows, measures)
    for name, _ in FIGURES[:3]:
        plot(runs, measures, name.removeprefix("curves_").removesuffix(".png"), out / name)
    plot_gains(runs, "/".join(measures[0]), target if target is not None else default_target(runs, measures),
               out / FIGURES[3][0])
    has_samples = samples_side_by_side(runs, out / "samples.png")
    collect_tensorboard(runs, out / "tensorboard")
    unfinished = [r.name for r in runs if not r.finished]
    intervals = sorted({row.interval for row in rows})
    notes = [
        f"{len(runs)} runs of {len(rows)} recipes. Every run of a seed saw the same training prompts, and every run "
        "the same evaluation prompts and noise. Final = the last evaluation; gain = last minus first "
        "(the base model), averaged over seeds. Intervals are 95%, " + " / ".join(intervals) + ".",
        "Training seconds count rollout, reward, advantage and update (evaluations excluded). A model forward is "
        "one denoiser call on one sample: rollout forwards plus one update forward per trained edge.",
    ]
    if any(len(row.seeds) == 1 for row in rows):
        notes.append("An interval of one seed is over the evaluation images only: it leaves out how much another "
                     "training seed would move the result, and with many recipes one in twenty such intervals "
                     "excludes 0 by chance alone.")
    if unfinished:
        notes.append("Unfinished runs (shown as far as they got): " + ", ".join(unfinished) + ".")
    if any(row.reach for row in rows):
        notes.append("Time to target: the training minutes (and model forwards) at which a run's gain over the base "
                     "first reaches the target, interpolated linearly between evaluations; the mean over the seeds "
                     "that reached it, with how many did.")
    machine = machine_note(runs)
    if machine:
        notes.append(machine)
    differ = setting_differences(runs)
    if differ:
        notes.append("Settings that differ besides the strategy: " + "; ".join(differ) + ".")
    if lead:
        notes.insert(0, lead)
    md = [f"# {title}", "", *[n + "\n" for n in notes], markdown(header, cells), ""]
    for name, caption in FIGURES:
        md += [f"Evaluation {caption}:", "", f"![{caption}]({name})", ""]
    if has_samples:
        md += ["Evaluation samples (same prompts and noise):", "", "![samples](samples.png)", ""]
    md += ["Every run's TensorBoard events: `tensorboard --logdir tensorboard`.", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(title, notes, header, cells, out, has_samples))
    (out / "runs.json").write_text(json.dumps(
        [{"name": r.name, "label": r.label, "seed": r.seed, "run_dir": str(r.run_dir)} for r in runs], indent=1) + "\n")
    return rows, measures, lead


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(title: str, notes: list[str], header: list[str], cells: list[list[str]], out: Path, samples: bool) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells)
    figures = "".join(f'<figure><img alt="{esc(c)}" src="{_data_uri(out / n)}"><figcaption>Evaluation {esc(c)}'
                      "</figcaption></figure>" for n, c in FIGURES)
    if samples:
        figures += (f'<figure><img alt="samples" src="{_data_uri(out / "samples.png")}">'
                    "<figcaption>Evaluation samples (same prompts and noise)</figcaption></figure>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; }}
th {{ background: #eef; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ font-size: 12px; color: #555; }}
</style></head><body>
<h1>{esc(title)}</h1>
{"".join(f"<p>{esc(n)}</p>" for n in notes)}
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{figures}
<p>Every run's TensorBoard events: <code>tensorboard --logdir tensorboard</code>.</p>
</body></html>
"""
