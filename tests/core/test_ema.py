"""The EMA of the trained weights: its update by hand, evaluation and export with the averaged
weights, an exact resume, and the refusal under ZeRO-3."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.ema import NoCopy, WeightAverage, lagged_weights, read, weight_average
from grpo.core.errors import UserError
from grpo.core.objective import Lag
from grpo.core.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[2]
DANCE = str(ROOT / "recipes" / "shapes_dance.toml")


def test_average_moves_every_n_steps_by_hand(tmp_path):
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = WeightAverage([p], ["w"], decay=0.9, every=2)
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 2.0]))
    ema.after_step()  # step 1: not yet
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.0, 2.0]))
    ema.after_step()  # step 2: 0.9·1 + 0.1·3
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.2, 2.0]))
    with ema.applied():
        torch.testing.assert_close(p.detach(), torch.tensor([1.2, 2.0]))
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 2.0]))  # the trained weights come back
    ema.save(tmp_path)
    again = WeightAverage([p], ["w"], decay=0.9, every=2)
    again.load(tmp_path)
    assert again.steps == 2 and torch.equal(again.shadow[0], ema.shadow[0])
    assert read(tmp_path).keys() == {"w"}


def test_zero3_partitioned_weights_are_refused():
    partitioned = torch.nn.Parameter(torch.empty(0))  # how ZeRO-3 leaves a parameter on each rank
    module = torch.nn.Module()
    module.w = partitioned
    with pytest.raises(UserError, match="ZeRO-3"):
        weight_average(module, [partitioned], 0.9, 1)
    assert isinstance(weight_average(module, [partitioned], 0.0, 1), NoCopy)
    with pytest.raises(UserError, match="ZeRO-3"):  # an objective's lagged copy, likewise
        lagged_weights(module, [partitioned], Lag(0.001, 0.5))
    assert isinstance(lagged_weights(module, [partitioned], None), NoCopy)


def test_the_warmup_is_the_released_ema_over_100_steps():
    """The EMA of DiffusionNFT's release (flow_grpo/ema.py ``EMAModuleWrapper``, decay 0.9, interval 1,
    stepped with the optimizer step count after its increment), written out again: at step s,
    ``ema += (1 − min((1 + s)/(10 + s), 0.9))·(θ − ema)``."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(4))
    ema = WeightAverage([p], ["w"], decay=0.9, every=1, warmup=True)
    released = p.detach().clone()
    for step in range(1, 101):
        with torch.no_grad():
            p.add_(torch.randn(4, generator=g))
        ema.after_step()
        one_minus_decay = 1 - min((1 + step) / (10 + step), 0.9)
        released.add_(one_minus_decay * (p.detach() - released))
        torch.testing.assert_close(ema.shadow[0], released, rtol=1e-6, atol=1e-6)
    assert ema.current_decay() == 0.9  # reached at s = 80


class ReleasedEMA:
    """Flow-GRPO's ``EMAModuleWrapper`` written out again: ``step(θ, s)`` blends with
    1 − min((1 + s)/(10 + s), decay) when (s + 1) is a multiple of the interval."""

    def __init__(self, theta: torch.Tensor, decay: float, interval: int) -> None:
        self.value, self.decay, self.interval = theta.clone(), decay, interval

    def step(self, theta: torch.Tensor, s: int) -> None:
        one_minus_decay = 1 - min((1 + s) / (10 + s), self.decay)
        if (s + 1) % self.interval == 0:
            self.value.add_(one_minus_decay * (theta - self.value))


@pytest.mark.parametrize("accumulation,interval", [(2, 8), (4, 1), (1, 8)])
def test_the_flow_grpo_schedule_is_the_released_loop_over_100_steps(accumulation, interval):
    """The released training loop (train_sd3.py): sample batches accumulate into an optimizer step every
    `accumulation` batches; after each batch, ``ema.step(θ, global_step)`` with the steps taken so far.
    Compared after every optimizer step (where evaluation and checkpoints see it) and just before it."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(4))
    ema = WeightAverage([p], ["w"], decay=0.9, every=interval, warmup=True, schedule="flow-grpo",
                        repeats=accumulation)
    released, global_step = ReleasedEMA(p.detach(), 0.9, interval), 0
    moved = 0
    for batch in range(100 * accumulation):
        if (batch + 1) % accumulation == 0:  # this batch ends the accumulation: the optimizer steps
            ema.before_step()
            torch.testing.assert_close(ema.shadow[0], released.value, rtol=1e-6, atol=1e-6)
            with torch.no_grad():
                p.add_(torch.randn(4, generator=g))
            global_step += 1
            ema.after_step()
        released.step(p.detach(), global_step)
        if (batch + 1) % accumulation == 0:
            torch.testing.assert_close(ema.shadow[0], released.value, rtol=1e-6, atol=1e-6)
            moved += int(not torch.equal(released.value, torch.zeros(4)))
    assert global_step == 100 and moved > 80  # the average moved from the start


def test_the_plain_schedule_refuses_repeats():
    p = torch.nn.Parameter(torch.zeros(2))
    module = torch.nn.Module()
    module.w = p
    with pytest.raises(UserError, match="ema_repeats"):
        weight_average(module, [p], 0.9, 8, schedule="plain", repeats=2)


def test_pending_blends_are_saved_and_restored(tmp_path):
    p = torch.nn.Parameter(torch.zeros(2))
    ema = WeightAverage([p], ["w"], decay=0.5, every=1, schedule="flow-grpo", repeats=3)
    with torch.no_grad():
        p.fill_(4.0)
    ema.after_step()  # one blend now (0.5·0 + 0.5·4), two owed before the next step
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 2.0))
    ema.save(tmp_path)
    again = WeightAverage([p], ["w"], decay=0.5, every=1, schedule="flow-grpo", repeats=3)
    again.load(tmp_path)
    assert (again.steps, again.pending) == (1, 2) and read(tmp_path).keys() == {"w"}
    again.before_step()  # 2 → 3 → 3.5
    torch.testing.assert_close(again.shadow[0], torch.full((2,), 3.5))
    again.before_step()  # nothing more owed
    torch.testing.assert_close(again.shadow[0], torch.full((2,), 3.5))


# due after optimizer steps 2, 5, 8 (four per iteration): blends are owed across the checkpoint at iteration 2
FLOW_GRPO_EMA = ("train.ema_schedule='flow-grpo'", "train.ema_repeats=2", "train.ema_warmup=true", "train.ema_every=3")


def args(model_dir, iterations, ema=True, schedule=()):
    sets = [f"model.path='{model_dir}'", f"train.iterations={iterations}", "train.prompts_per_iteration=2",
            "strategy.group_size=3", "strategy.step_window=[]", "sampler.steps=4", "train.micro_batch=5",
            "train.checkpoint_every=1", "train.lr=1e-3", "eval.every=2", "eval.grid_images=4",
            "prompts.eval_train_samples=0", "prompts.eval_held_out_samples=1",
            *(["train.ema_decay=0.5", "train.ema_every=2", *schedule] if ema else [])]
    return [x for s in sets for x in ("--set", s)]


@pytest.mark.parametrize("schedule", [(), FLOW_GRPO_EMA], ids=["plain", "flow-grpo"])
def test_evaluation_and_export_use_the_average_and_resume_is_exact(tiny_model_dir, tmp_path, schedule):
    run = lambda *a: CliRunner().invoke(app, [*a, "--quiet"])  # noqa: E731
    whole, cut, plain = tmp_path / "whole", tmp_path / "cut", tmp_path / "plain"
    args_ = lambda n, **k: args(tiny_model_dir, n, schedule=schedule, **k)  # noqa: E731
    assert run("run", DANCE, *args_(4), "--out", str(whole)).exit_code == 0
    assert run("run", DANCE, *args_(4, ema=False), "--out", str(plain)).exit_code == 0
    # the same training either way; only what evaluation sees differs
    train = lambda r: [x for x in read_metrics(r) if x["kind"] == "train"]  # noqa: E731
    assert [x["update/loss"] for x in train(whole)] == [x["update/loss"] for x in train(plain)]
    ev = lambda r: [x["held-out/shapes-faithfulness"] for x in read_metrics(r) if x["kind"] == "eval"]  # noqa: E731
    assert ev(whole)[0] == ev(plain)[0] and ev(whole)[1:] != ev(plain)[1:]
    last = whole / "checkpoints" / "iter_000004"
    averaged, trained = read(last), load_file(str(last / "trained.safetensors"))
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)
    # resume from the checkpoint after two iterations: the same average and evaluations as the whole run
    assert run("run", DANCE, *args_(2), "--out", str(cut)).exit_code == 0
    assert run("run", "--resume", str(cut), "--set", "train.iterations=4").exit_code == 0
    resumed = read(cut / "checkpoints" / "iter_000004")
    for k in averaged:
        assert torch.equal(resumed[k], averaged[k]), k
    assert ev(cut) == ev(whole)
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(whole), "--out", str(out)])
    assert result.exit_code == 0 and "EMA tensors" in result.output, result.output
    raw = tmp_path / "export-raw"
    result = CliRunner().invoke(app, ["export", str(whole), "--out", str(raw), "--no-ema"])
    assert result.exit_code == 0 and "trained tensors" in result.output, result.output
