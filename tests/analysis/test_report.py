import json
import math

import pytest
import torch

from grpo.analysis.report import gain_curve, paired_differences, write_report


def test_paired_difference_hand_computed(tmp_path):
    (tmp_path / "eval").mkdir()
    torch.save({"train": {"r/exact": [0.0, 1.0, 0.0, 1.0]}}, tmp_path / "eval" / "iter_000000.pt")
    torch.save({"train": {"r/exact": [1.0, 1.0, 1.0, 1.0]}}, tmp_path / "eval" / "iter_000010.pt")
    (d,) = paired_differences(tmp_path)
    # differences 1, 0, 1, 0: mean 0.5, unbiased sd sqrt(1/3), CI 1.96·sd/2
    assert (d.base, d.final, d.diff, d.n) == (0.5, 1.0, 0.5, 4)
    assert d.ci95 == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    assert not d.significant  # 0.5 < 0.566


def test_gain_curve_is_paired_against_the_first_evaluation(tmp_path):
    (tmp_path / "eval").mkdir()
    for it, values in ((0, [0.0, 1.0, 0.0]), (5, [1.0, 1.0, 0.0]), (10, [1.0, 0.0, 1.0])):
        torch.save({"train": {"r": values}, "held-out": {"r": [0.5]}}, tmp_path / "eval" / f"iter_{it:06d}.pt")
    curve = gain_curve(tmp_path, "train", "r")
    assert [it for it, _ in curve] == [5, 10]
    # iteration 5: differences 1, 0, 0 (mean 1/3, sd 1/sqrt(3)); iteration 10: 1, -1, 1 (mean 1/3, sd 2/sqrt(3))
    assert [d.diff for _, d in curve] == pytest.approx([1 / 3, 1 / 3])
    assert [d.ci95 for _, d in curve] == pytest.approx([1.96 / 3, 1.96 * 2 / 3])
    assert [d.ci95 for _, d in gain_curve(tmp_path, "held-out", "r")] == [0.0, 0.0]  # one image: no interval
    assert gain_curve(tmp_path, "train", "missing") == []


def test_report_files(tmp_path):
    (tmp_path / "eval").mkdir()
    for it, v in ((0, 0.2), (5, 0.6)):
        torch.save({"held-out": {"r": [v, v + 0.1, v - 0.1]}}, tmp_path / "eval" / f"iter_{it:06d}.pt")
    records = [{"iteration": 0, "kind": "eval", "held-out/r": 0.2, "held-out/r/ci95": 0.1},
               {"iteration": 0, "kind": "train", "time/iteration": 30.0},
               {"iteration": 5, "kind": "eval", "held-out/r": 0.6, "held-out/r/ci95": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = write_report(tmp_path)
    summary = (out / "summary.md").read_text()
    assert "| held-out | r | 0.200 | 0.600 | **+0.400 ± 0.000** | 3 |" in summary
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "gains.png").stat().st_size > 1000 and "![paired gains](gains.png)" in summary
