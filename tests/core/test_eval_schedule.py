"""The evaluation schedule against hand-written sequences: iteration counts, training-time marks, resume."""

from grpo.core.evaluation import Schedule
from grpo.core.recipe import EvalConfig


def _walk(schedule, clock):
    """(done, mark) of every evaluation after the base, for a run whose clock after iteration i is clock[i]."""
    out = []
    for i, elapsed in enumerate(clock):
        due, mark = schedule.due(i + 1, elapsed)
        if due:
            out.append((i + 1, mark))
    return out


def test_every_n_iterations_and_the_last():
    s = Schedule(EvalConfig(every=3), iterations=7)
    assert s.due(0, 0.0) == (True, None)
    assert _walk(s, [10.0 * k for k in range(1, 8)]) == [(3, None), (6, None), (7, None)]


def test_training_time_marks():
    # 1-minute marks; iterations of 25 s, then one of 130 s that passes two marks (one evaluation, for the later)
    s = Schedule(EvalConfig(every=3, every_minutes=1.0), iterations=100)
    assert s.due(0, 0.0) == (True, 0.0)
    clock = [25.0, 50.0, 75.0, 100.0, 125.0, 255.0, 280.0]
    assert _walk(s, clock) == [(3, 1.0), (5, 2.0), (6, 4.0)]
    assert s.due(7, 280.0, force=True) == (True, None)  # the end of a time budget: evaluated, not a mark's


def test_a_resumed_run_continues_its_marks():
    s = Schedule(EvalConfig(every_minutes=1.0), iterations=100, elapsed=130.0)  # two marks already passed
    assert s.due(5, 130.0, force=True) == (True, None)  # the checkpoint's evaluation, repeated
    assert _walk(s, [150.0, 179.0, 181.0]) == [(3, 3.0)]


def test_no_evaluation():
    s = Schedule(EvalConfig(every=0), iterations=5)
    assert s.due(0, 0.0, force=True) == (False, None) and s.due(5, 10.0) == (False, None)
