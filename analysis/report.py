"""A finished run at a glance: paired evaluation differences, curves and before/after samples.

Evaluations use fixed prompts and fixed noise, so the change of a measure between two evaluations
is judged image by image (a paired difference): far tighter than comparing two means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from grpo.core.errors import UserError
from grpo.core.integrity import DamagedFile, load_data
from grpo.core.rundir import RunDir
from grpo.core.runlog import read_metrics


@dataclass(frozen=True)
class PairedDifference:
    set_name: str
    measure: str
    base: float
    final: float
    diff: float
    ci95: float
    n: int

    @property
    def significant(self) -> bool:
        return abs(self.diff) > self.ci95


def eval_iterations(run_dir: Path) -> list[int]:
    return RunDir(run_dir).evaluated_iterations()


def load_eval(run_dir: Path, iteration: int) -> dict[str, dict[str, list[float]]]:
    """Per-image scores of one evaluation, read as data only (a file holding anything else is refused)."""
    scores = load_data(RunDir(run_dir).eval_scores(iteration))
    if not isinstance(scores, dict) or not all(isinstance(v, dict) for v in scores.values()):
        raise DamagedFile(RunDir(run_dir).eval_scores(iteration), "is not a table of per-image scores by set and measure")
    return scores


def paired_differences(run_dir: Path, base: int | None = None, final: int | None = None) -> list[PairedDifference]:
    """Per evaluation set and measure: mean(final − base) over the same prompts and noise, ±1.96 s.e."""
    its = eval_iterations(run_dir)
    if len(its) < 1:
        raise UserError(f"{run_dir} has no evaluations", hint="set [eval] every > 0 and run some iterations")
    b, f = (its[0] if base is None else base), (its[-1] if final is None else final)
    before, after = load_eval(run_dir, b), load_eval(run_dir, f)
    out = []
    for set_name, measures in after.items():
        for measure, values in measures.items():
            x = torch.tensor(before[set_name][measure], dtype=torch.float64)
            y = torch.tensor(values, dtype=torch.float64)
            d = y - x
            ci = float(1.96 * d.std(unbiased=True) / math.sqrt(d.numel())) if d.numel() > 1 else 0.0
            out.append(PairedDifference(set_name, measure, float(x.mean()), float(y.mean()), float(d.mean()), ci, d.numel()))
    return out


def gain_curves(run_dir: Path) -> dict[tuple[str, str], list[tuple[int, PairedDifference]]]:
    """Per (set, measure): the paired difference against the first evaluation at every evaluation after it."""
    its = eval_iterations(run_dir)
    out: dict[tuple[str, str], list[tuple[int, PairedDifference]]] = {}
    for it in its[1:]:
        for d in paired_differences(run_dir, its[0], it):
            out.setdefault((d.set_name, d.measure), []).append((it, d))
    return out


def gain_curve(run_dir: Path, set_name: str, measure: str) -> list[tuple[int, PairedDifference]]:
    """One measure's paired differences against the first evaluation (empty if the run never measured it)."""
    return gain_curves(run_dir).get((set_name, measure), [])


def markdown_table(diffs: list[PairedDifference], base: int, final: int) -> str:
    lines = [f"| set | measure | iteration {base} | iteration {final} | paired difference (95% CI) | n |",
             "|---|---|---|---|---|---|"]
    for d in diffs:
        mark = " **" if d.significant else " "
        lines.append(f"| {d.set_name} | {d.measure} | {d.base:.3f} | {d.final:.3f} |{mark}{d.diff:+.3f} ± {d.ci95:.3f}"
                     f"{'**' if d.significant else ''} | {d.n} |")
    return "\n".join(lines)


def _panels(measures: list[str], sets: list[str]):
    """A figure with one panel per (measure, set): (pyplot, figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(measures), len(sets), figsize=(4.2 * len(sets), 3.0 * len(measures)), squeeze=False)
    return plt, fig, axes


def _band(ax, xs: list[float], ys: list[float], cis: list[float], *, label: str, alpha: float, title: str,
          xlabel: str) -> None:
    """One run's line with its ±interval band."""
    ax.plot(xs, ys, marker="o", label=label)
    ax.fill_between(xs, [y - c for y, c in zip(ys, cis, strict=True)],
                    [y + c for y, c in zip(ys, cis, strict=True)], alpha=alpha)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(alpha=0.3)


def _save(plt, fig, axes, out: Path) -> None:
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_curves(run_dirs: dict[str, Path], measures: list[str], out: Path, *, x_axis: str = "iteration") -> None:
    """Evaluation measures (mean ± 95% CI) of one or several runs, against iteration or wall-clock."""
    sets = sorted({k.split("/")[0] for d in run_dirs.values() for r in read_metrics(d) if r["kind"] == "eval"
                   for k in r if k not in ("iteration", "kind") and not k.startswith("time/")})
    plt, fig, axes = _panels(measures, sets)
    xlabel = "training minutes (rollout + reward + update)" if x_axis == "minutes" else "iteration"
    for label, run_dir in run_dirs.items():
        records = read_metrics(run_dir)
        clock, elapsed = {0: 0.0}, 0.0
        for r in records:
            if r["kind"] == "train":
                elapsed += r.get("time/iteration", 0.0)
                clock[r["iteration"] + 1] = elapsed
        evals = [r for r in records if r["kind"] == "eval"]
        for i, measure in enumerate(measures):
            for j, set_name in enumerate(sets):
                key = f"{set_name}/{measure}"
                pts = [(r["iteration"], r[key], r.get(f"{key}/ci95", 0.0)) for r in evals if key in r]
                if not pts:
                    continue
                xs = [clock.get(p[0], float("nan")) / 60 if x_axis == "minutes" else p[0] for p in pts]
                _band(axes[i][j], xs, [p[1] for p in pts], [p[2] for p in pts], label=label, alpha=0.2,
                      title=f"{set_name}: {measure}", xlabel=xlabel)
    _save(plt, fig, axes, out)


def plot_gains(run_dirs: dict[str, Path], measures: list[str], out: Path) -> None:
    """Each run's paired gain over its first evaluation (same prompts, same noise) against iteration, with
    its 95% interval: the band answers "did it improve?", where the interval of a level does not."""
    sets = sorted({name for d in run_dirs.values() for it in eval_iterations(d)[:1] for name in load_eval(d, it)})
    plt, fig, axes = _panels(measures, sets)
    for label, run_dir in run_dirs.items():
        first, curves = eval_iterations(run_dir)[0], gain_curves(run_dir)
        for i, measure in enumerate(measures):
            for j, set_name in enumerate(sets):
                pts = curves.get((set_name, measure))
                if not pts:
                    continue
                ax = axes[i][j]
                _band(ax, [first, *(it for it, _ in pts)], [0.0, *(d.diff for _, d in pts)],
                      [0.0, *(d.ci95 for _, d in pts)], label=label, alpha=0.15,
                      title=f"{set_name}: {measure}, paired gain", xlabel="iteration")
                ax.axhline(0.0, color="grey", linewidth=0.8)
    _save(plt, fig, axes, out)


def before_after(run_dir: Path, base: int, final: int, out: Path) -> None:
    """The evaluation sample grids of two iterations side by side (same prompts, same noise)."""
    a = Image.open(RunDir(run_dir).sample_grid(base)).convert("RGB")
    b = Image.open(RunDir(run_dir).sample_grid(final)).convert("RGB")
    pad = 24
    canvas = Image.new("RGB", (a.width + b.width + pad, max(a.height, b.height) + pad), (255, 255, 255))
    canvas.paste(a, (0, pad))
    canvas.paste(b, (a.width + pad, pad))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((4, 6), f"before: iteration {base}", fill=(0, 0, 0), font=font)
    draw.text((a.width + pad + 4, 6), f"after: iteration {final} (same prompts and noise)", fill=(0, 0, 0), font=font)
    canvas.save(out)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report/``: summary.md, curves.png, gains.png, before_after.png."""
    its = eval_iterations(run_dir)
    if not its:
        raise UserError(f"{run_dir} has no evaluations", where="--run", hint="set [eval] every > 0")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    diffs = paired_differences(run_dir)
    measures = sorted({d.measure for d in diffs if d.measure.count("/") <= 1 and not d.measure.endswith("/score")})
    plot_curves({run_dir.name: run_dir}, measures, out / "curves.png")
    if len(its) > 1:
        plot_gains({run_dir.name: run_dir}, measures, out / "gains.png")
    if RunDir(run_dir).sample_grid(its[0]).is_file() and len(its) > 1:
        before_after(run_dir, its[0], its[-1], out / "before_after.png")
    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    minutes = sum(r.get("time/iteration", 0.0) for r in train) / 60
    text = [f"# Run {run_dir.name}", "",
            f"{len(train)} iterations, {minutes:.1f} minutes of training (rollout, reward, advantage, update; "
            f"evaluations excluded). Paired differences between the evaluations at iterations {its[0]} and {its[-1]} "
            "(same prompts, same noise); bold where the change exceeds its 95% interval.", "",
            markdown_table(diffs, its[0], its[-1]), "", "![curves](curves.png)", "",
            *(["![paired gains](gains.png)", ""] if len(its) > 1 else []), "![before and after](before_after.png)", ""]
    (out / "summary.md").write_text("\n".join(text))
    return out
