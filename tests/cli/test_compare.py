"""`grpo compare`: fair runs (same prompts, same evaluation noise), the report, `--from`, bad input."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from grpo.analysis.compare import seed_interval, t_quantile_975
from grpo.cli.main import app

COMMON = """
[model]
use = "shapes"
path = "{model}"
[[reward]]
use = "shapes-faithfulness"
[prompts]
use = "shapes"
eval_train_samples = 0
eval_held_out_samples = {held_out}
[train]
iterations = 2
prompts_per_iteration = 2
micro_batch = 8
rollout_batch = 16
checkpoint_every = 1
[eval]
every = 1
grid_images = 4
"""
DANCE = '[strategy]\nuse = "dancegrpo"\ngroup_size = 4\ntimestep_fraction = 0.5\n[sampler]\nuse = "dance-sde"\nsteps = 4\n'
BRANCH = '[strategy]\nuse = "branchgrpo"\nsplit_points = [0, 2]\n[sampler]\nuse = "dance-sde"\nsteps = 4\n'


@pytest.fixture(scope="module")
def recipes(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipes")
    for name, head, held_out in (("dance", DANCE, 1), ("branch", BRANCH, 1), ("other", BRANCH, 2)):
        (folder / f"{name}.toml").write_text(head + COMMON.format(model=tiny_model_dir, held_out=held_out))
    return folder


@pytest.fixture(scope="module")
def compared(recipes, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    result = CliRunner().invoke(app, ["compare", str(recipes / "dance.toml"), str(recipes / "branch.toml"),
                                      "--seeds", "0,1", "--iterations", "1", "--parallel", "2", "--out", str(out),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compared_runs_share_prompts_and_evaluation_noise(compared):
    runs = compared / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["branch-seed0", "branch-seed1", "dance-seed0", "dance-seed1"]
    for seed in (0, 1):
        a, b = _lines(runs / f"dance-seed{seed}" / "prompts.jsonl"), _lines(runs / f"branch-seed{seed}" / "prompts.jsonl")
        assert a == b and len(a) == 1 and len(a[0]["prompts"]) == 2
    fingerprints = {json.loads((runs / n / "eval" / "fingerprint.json").read_text())["held-out"]
                    for n in ("dance-seed0", "dance-seed1", "branch-seed0", "branch-seed1")}
    assert len(fingerprints) == 1
    # the seed changes what is trained on: the training noise of the two seeds differs
    m0 = [r for r in _lines(runs / "dance-seed0" / "metrics.jsonl") if r["kind"] == "train"][0]
    m1 = [r for r in _lines(runs / "dance-seed1" / "metrics.jsonl") if r["kind"] == "train"][0]
    assert m0["update/loss"] != m1["update/loss"]


def test_report_files_and_tensorboard(compared):
    for name in ("report.md", "report.html", "curves_iteration.png", "curves_seconds.png", "curves_forwards.png",
                 "gains_minutes.png", "samples.png"):
        assert (compared / name).is_file(), name
    md = (compared / "report.md").read_text()
    assert "| dance | 0,1 | 1 |" in md and "| branch | 0,1 | 1 |" in md
    html = (compared / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table>" in html and "src=\"curves" not in html
    for name in ("dance-seed0", "branch-seed1"):
        assert list((compared / "tensorboard" / name).glob("events.out.tfevents.*"))


def test_the_report_names_the_machine(compared):
    import os
    import platform

    import torch

    info = json.loads((compared / "runs" / "dance-seed0" / "runtime.json").read_text())
    assert info["cpu_cores"] == os.cpu_count() and info["threads"] == torch.get_num_threads()
    if platform.system() == "Linux":
        names = {" ".join(line.split(":", 1)[1].split()) for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")}
        assert info["cpu"] in names
    threads = "1 thread" if info["threads"] == 1 else f"{info['threads']} threads"
    expected = f"Machine: {info['cpu']} ({os.cpu_count()} logical cores), 1 rank, {threads} per rank."
    assert expected in (compared / "report.md").read_text().splitlines()


def test_runs_of_different_machines_are_said():
    from grpo.analysis.compare import machine_note

    a, b, c = _run("dance", 0, [(0, 0.0)]), _run("branch", 0, [(0, 0.0)]), _run("mix", 0, [(0, 0.0)])
    assert machine_note([a, b]) is None  # nothing recorded: nothing said
    a.machine = b.machine = "X (2 logical cores), 1 rank, 1 thread per rank"
    assert machine_note([a, b, c]) == "Machine: X (2 logical cores), 1 rank, 1 thread per rank (mix-seed0: not recorded)."
    b.machine = "Y"
    assert machine_note([a, b]) == ("Runs measured on different machines or thread counts, so their training times "
                                    "are not comparable: "
                                    "dance-seed0 on X (2 logical cores), 1 rank, 1 thread per rank; branch-seed0 on Y.")


def test_rerun_keeps_finished_runs(compared, recipes):
    before = {p: p.stat().st_mtime_ns for p in (compared / "runs").glob("*/metrics.jsonl")}
    result = CliRunner().invoke(app, ["compare", str(recipes / "dance.toml"), str(recipes / "branch.toml"),
                                      "--seeds", "0,1", "--iterations", "1", "--out", str(compared), "--quiet"])
    assert result.exit_code == 0, result.output
    assert before == {p: p.stat().st_mtime_ns for p in (compared / "runs").glob("*/metrics.jsonl")}
    # without --quiet the table of runs is drawn, and the report's first sentence starts on a line of its own
    result = CliRunner().invoke(app, ["compare", str(recipes / "dance.toml"), str(recipes / "branch.toml"),
                                      "--seeds", "0,1", "--iterations", "1", "--out", str(compared)])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output and "┘\n" in result.output, result.output
    # a kept run made with other settings is refused, not silently mixed in
    result = CliRunner().invoke(app, ["compare", str(recipes / "dance.toml"), "--iterations", "2",
                                      "--out", str(compared), "--quiet"])
    assert result.exit_code == 2 and "other settings" in result.output


def test_from_reproduces_the_table(compared, tmp_path):
    runs = [r["run_dir"] for r in json.loads((compared / "runs.json").read_text())]  # the table's row order
    result = CliRunner().invoke(app, ["compare", *sum([["--from", str(r)] for r in runs], []), "--out",
                                      str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output

    def table(path):
        return [line for line in path.read_text().splitlines() if line.startswith("|")]

    assert table(tmp_path / "report.md") == table(compared / "report.md")


def test_seed_interval_against_a_hand_computed_case():
    # values 0.5, 0.6, 0.7: mean 0.6, sample sd 0.1, t(0.975; 2 df) = 4.303 → 4.303 · 0.1 / √3 = 0.24843
    mean, half = seed_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(0.248434, abs=1e-5)
    assert seed_interval([0.3]) == (0.3, 0.0)
    assert t_quantile_975(1) == 12.706 and t_quantile_975(1000) == 1.96


@pytest.mark.parametrize("args,message", [
    (["{r}/dance.toml", "{r}/other.toml"], "differ in prompts.eval_held_out_samples"),
    (["{r}/dance.toml", "--iterations", "1", "--time-budget", "1"], "exclusive"),
    (["{r}/dance.toml", "--seeds", "0,x"], "--seeds"),
    (["{r}/missing.toml"], "does not exist"),
    (["--from", "{r}"], "not a finished run directory"),
])
def test_bad_input_exits_2(recipes, tmp_path, args, message):
    args = [a.format(r=recipes) for a in args]
    result = CliRunner().invoke(app, ["compare", *args, "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "runs").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (Debian package chromium)")
def test_html_report_renders_in_a_headless_browser(compared, tmp_path):
    # a window taller than the whole report, so that every figure is on the screenshot
    shot, height = tmp_path / "shot.png", 5000
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--window-size=1200,{height}", f"--screenshot={shot}",
                    (compared / "report.html").as_uri()], capture_output=True, timeout=120, check=False)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape == (height, 1200, 3)
    drawn = (image != 255).any(axis=2)
    # the text and the table are drawn: a good share of the first screen is not white background ...
    assert drawn[:1600].mean() > 0.05
    # ... the page ends inside the window (its last 200 rows are background) ...
    assert not drawn[-200:].any()
    # ... and every plot is drawn: matplotlib's second colour (#ff7f0e) appears only in the four figures,
    # which stand one below the other, so its rows fall into four bands
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    orange = (abs(r - 255) < 30) & (abs(g - 127) < 30) & (b < 60)
    rows = np.flatnonzero(orange.any(axis=1))
    assert rows.size  # (how many pixels varies: the runs' lines can hide one another)
    bands = 1 + int((np.diff(rows) > 40).sum())
    assert bands >= 4, rows


def _run(label, seed, curve, *, minutes_per_iteration=1.0):
    """A hand-made run: evaluations after the given iterations with the given scores (one iteration per
    `minutes_per_iteration` of training)."""
    from grpo.analysis.compare import RunSummary

    last = max(i for i, _ in curve)
    train = [{"iteration": i, "kind": "train", "time/iteration": 60.0 * minutes_per_iteration,
              "time/elapsed": 60.0 * minutes_per_iteration * (i + 1)} for i in range(last)]
    evals = [{"iteration": i, "kind": "eval", "held-out/score": s} for i, s in curve]
    return RunSummary(f"{label}-seed{seed}", label, seed, Path("/nonexistent"), last, evals, train, True)


def test_time_to_target_against_hand_made_curves():
    from grpo.analysis.compare import headline, reach, summarise, time_to_target

    # gains 0, 0.02, 0.06 at 0, 10, 20 minutes: 0.04 is reached halfway between the last two
    assert time_to_target([(0.0, 0.0), (10.0, 0.02), (20.0, 0.06)], 0.04) == pytest.approx(15.0)
    assert time_to_target([(0.0, 0.0), (10.0, 0.02), (20.0, 0.06)], 0.02) == pytest.approx(10.0)
    assert time_to_target([(0.0, 0.0), (10.0, 0.02)], 0.03) is None
    assert time_to_target([(0.0, 0.0), (10.0, -0.01)], 0.0) == 0.0
    # DanceGRPO's three seeds end at gains 0.02, 0.06, 0.07 (mean 0.05: the default target) after 20 iterations,
    # half of it after 10; BranchGRPO, twice as fast per iteration, is at 0.1 after 8, 10 and 16 iterations and
    # ends at 0.08 (scores are gains: the base scores 0)
    dance = [_run("dance", s, [(0, 0.0), (10, g / 2), (20, g)]) for s, g in enumerate((0.02, 0.06, 0.07))]
    branch = [_run("branch", s, [(0, 0.0), (e, 0.1), (20, 0.08)], minutes_per_iteration=0.5)
              for s, e in enumerate((8, 10, 16))]
    rows, _ = summarise(dance + branch)
    assert rows[0].label == "dance" and rows[1].label == "branch"
    r = rows[1].reach  # 0.05 is half of 0.1, reached at half of 4, 5 and 8 minutes
    assert r.reached == 3 and r.minutes[0] == pytest.approx((2 + 2.5 + 4) / 3)
    # sample sd of 2, 2.5, 4 is √(13/12); t(0.975, 2) = 4.303
    assert r.minutes[1] == pytest.approx(4.303 * (13 / 12) ** 0.5 / 3 ** 0.5, rel=1e-6)
    d = rows[0].reach  # seed 0 never reaches 0.05; seeds 1 and 2 between their 10- and 20-minute evaluations
    assert d.reached == 2 and d.minutes[0] == pytest.approx((10 + 10 * 0.02 / 0.03 + 10 + 10 * 0.015 / 0.035) / 2)
    assert reach(dance, "held-out/score", 0.2).reached == 0
    text = headline(dance + branch, rows, [("held-out", "score")])
    assert text.startswith("branch reached a gain of +0.050 in held-out/score (dance's final gain) after 2.8 ± 2.6 "
                           "training minutes (3/3 seeds), against 15.5 ± 15.1 for dance (2/3 seeds)"), text
    # final gains 0.08 against 0.02, 0.06, 0.07, paired by seed: differences 0.06, 0.02, 0.01,
    # mean 0.03, sd √0.0007, half-width 4.303 · √0.0007 / √3 = 0.066
    assert "by +0.030 ± 0.066 (paired by seed, 3 seeds), an interval that includes 0" in text
    # a target nobody reaches is said so
    text = headline(dance + branch, *summarise(dance + branch, 0.5), 0.5)
    assert text.startswith("Neither branch nor dance reached a gain of +0.500")


def test_the_shipped_shapes_family_compares_as_is(tmp_path):
    """Any two shapes recipes pass the fairness check with no override, and have nothing to declare
    but their algorithm; a recipe with other evaluation settings is said, not refused."""
    from grpo.cli.compare import plan_jobs

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    family = sorted(recipes.glob("shapes_*.toml"), key=lambda p: (p.stem != "shapes_branch", p.stem))  # against it
    jobs, notes = plan_jobs(family, [0, 1], [], tmp_path)
    assert len(jobs) == 2 * len(family)
    said = {(n.split(" differs ")[0], n.split(" in ")[1].split(":")[0]) for n in notes}
    sde = {"sampler.use"}  # a sampler of another kind: its kind is said, not each option it lacks
    assert {k for r, k in said if r == "shapes_dance_lora"} == {"model.lora_rank", "train.lr"}
    assert {k for r, k in said if r in ("shapes_mixgrpo", "shapes_mixgrpo_flash")} == sde
    assert {k for r, k in said if r == "shapes_flowgrpo"} == sde
    # the forward-process recipes train whole chains per micro-batch, as their release does
    assert {k for r, k in said if r in ("shapes_nft", "shapes_awm")} == sde | {"train.accumulation_unit"}
    assert {k for r, k in said if r == "shapes_nft_tree"} == {"train.accumulation_unit"}
    # DGPO's units are whole groups of 8: 4 of them make the family's 32 leaves per forward
    assert {k for r, k in said if r == "shapes_dgpo"} == sde | {"train.accumulation_unit", "train.micro_batch"}
    assert {r for r, _ in said} == {"shapes_dance_lora", "shapes_flowgrpo", "shapes_mixgrpo", "shapes_mixgrpo_flash",
                                    "shapes_nft", "shapes_nft_tree", "shapes_awm", "shapes_dgpo"}
    _, notes = plan_jobs([recipes / "shapes_dance.toml", recipes / "shapes_branch.toml"], [0],
                         ["eval.every_minutes=5"], tmp_path)
    assert notes == []
    _, notes = plan_jobs([recipes / "shapes_dance.toml", recipes / "shapes_branch.toml"], [0], [], tmp_path,
                         time_budget=40.0)
    assert notes == []  # the recipes' own marks (every 10 minutes) are used
    _, notes = plan_jobs([recipes / "shapes_dance.toml", recipes / "shapes_branch.toml"], [0],
                         ["eval.every_minutes=0"], tmp_path, time_budget=40.0)
    assert notes == ["evaluating every 10 minutes of training (eval.every_minutes), so that every run is "
                     "evaluated at the same training times"]


def test_table_and_headline_numbers_are_written_plainly():
    from grpo.analysis.compare import headline, summarise, table_rows

    # seeds of 20 and 21 iterations: 20.5 on average; equal final gains: a difference of 0.000, not -0.000
    dance = [_run("dance", s, [(0, 0.0), (n, 0.0400)]) for s, n in ((0, 20), (1, 21))]
    branch = [_run("branch", s, [(0, 0.0), (20, g)]) for s, g in ((0, 0.0399), (1, 0.0400))]
    rows, measures = summarise(dance + branch)
    _, cells = table_rows(rows, measures)
    assert [c[2] for c in cells] == ["20.5", "20"]
    text = headline(dance + branch, rows, measures)
    assert "final gain differs from dance's by 0.000 ± 0.001 (paired by seed, 2 seeds)" in text, text


def test_model_forwards_count_the_units_of_any_objective():
    """An edge or a re-noised sample is one update forward: cumulative forwards and units per leaf read
    the objective's own `update/trained_<unit>`."""
    from grpo.analysis.compare import trained_units

    edges = _run("a", 0, [(0, 0.0), (2, 0.1)])
    for r in edges.train:
        r.update({"cost/rollout_forwards": 100.0, "update/trained_edges": 30.0, "cost/trained_edges": 30.0,
                  "cost/leaves": 10.0})
    samples = _run("b", 0, [(0, 0.0), (2, 0.1)])
    for r in samples.train:
        r.update({"cost/rollout_forwards": 100.0, "update/trained_samples": 20.0, "cost/trained_samples": 20.0,
                  "cost/leaves": 10.0})
    assert edges.forwards() == {0: 0.0, 1: 130.0, 2: 260.0} and samples.forwards() == {0: 0.0, 1: 120.0, 2: 240.0}
    assert edges.per_leaf("cost/trained_edges") == 3.0 and samples.per_leaf("cost/trained_edges") == 2.0
    assert trained_units({"cost/trained_samples": 4.0}) == 4.0 and trained_units({}) == 0.0
