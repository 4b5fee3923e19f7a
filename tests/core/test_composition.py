"""A recipe chooses every part of a strategy by name: a topology, an advantage estimator and pruners
from a third-party package (entry point) or a ``[plugins] modules`` module replace the slots of
each built-in strategy, without writing a strategy; every malformed slot is one exit-2 message
naming its path, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core.compose import default_make
from grpo.core.recipe import load_toml, parse
from grpo.core.registry import load_registry

PARTS = '''
from typing import Annotated

import torch

from grpo.core.hookspecs import hookimpl
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, TreePlan


class KeepEarly:
    """Train only the steps before `max_step`."""

    def __init__(self, *, max_step: Annotated[int, Range(ge=1), Doc("first step not trained")] = 2) -> None:
        self.max_step = max_step

    def __call__(self, rollout, advantages, edges, ctx):
        return EdgeSet([m.clone() if k < self.max_step else torch.zeros_like(m) for k, m in enumerate(edges.masks)])


class SignAdvantage:
    """+1, -1 or 0: the sign of a leaf's reward minus its tree's mean, beyond a tolerance."""

    def __init__(self, *, tolerance: Annotated[float, Range(ge=0), Doc("differences counted as 0")] = 1e-6) -> None:
        self.tolerance = tolerance

    def __call__(self, rollout, rewards):
        per_tree = rewards.float().reshape(rollout.num_trees, rollout.plan.leaves)
        d = per_tree - per_tree.mean(dim=1, keepdim=True)
        leaf = torch.where(d.abs() <= self.tolerance, torch.zeros_like(d), torch.sign(d)).reshape(-1)
        return Advantages([rollout.reduce_leaves(leaf, k + 1) for k in range(rollout.steps)])


class TwoSplits:
    """Split every node into `branch` children at steps 0 and 1."""

    def __init__(self, *, branch: Annotated[int, Range(ge=2), Doc("children per split")] = 2) -> None:
        self.branch = branch

    def plan(self, steps, iteration=0):
        return TreePlan(tuple(self.branch if k < 2 else 1 for k in range(steps)), (1.0,) * steps, (True,) * steps)


@hookimpl
def grpo_register_pruner(registry):
    registry.add("keep-early", KeepEarly)


@hookimpl
def grpo_register_advantage(registry):
    registry.add("sign-advantage", SignAdvantage)


@hookimpl
def grpo_register_topology(registry):
    registry.add("two-splits", TwoSplits)
'''
SLOTS = '''
[strategy.topology]
use = "two-splits"
branch = 2

[strategy.advantage]
use = "sign-advantage"
tolerance = 1e-6

[[strategy.pruner]]
use = "keep-early"
max_step = 2
'''
STRATEGIES = ["dancegrpo", "branchgrpo", "branchgrpo-mix"]
SMALL = ["model.path='{model}'", "sampler.steps=4", "train.iterations=1", "train.prompts_per_iteration=2",
         "train.micro_batch=8", "train.rollout_batch=16", "train.checkpoint_every=1", "eval.every=1",
         "eval.grid_images=2", "prompts.eval_train_samples=0", "prompts.eval_held_out_samples=1"]


def recipe_text(strategy: str, extra: str = "", modules: str = "") -> str:
    plugins = f'\n[plugins]\nmodules = ["{modules}"]\n' if modules else ""
    return (f'[model]\nuse = "shapes"\n\n[strategy]\nuse = "{strategy}"\nclip_range = 1e-3\n{extra}\n'
            f'[[reward]]\nuse = "shapes-faithfulness"\n\n[prompts]\nuse = "shapes"\n{plugins}')


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A folder on sys.path holding the parts as a local module (``slot_parts_local``)."""
    (tmp_path / "slot_parts_local.py").write_text(PARTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("GRPO_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return tmp_path


def install(folder: Path) -> None:
    """The same parts as an installed distribution whose ``grpo`` entry point names its package."""
    package = folder / "slot_parts_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(PARTS)
    info = folder / "grpo_slot_parts-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: grpo-slot-parts\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[grpo]\nslot_parts = slot_parts_pkg\n")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("source", ["entry-point", "module"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_third_party_parts_fill_every_slot_of_a_builtin_strategy(strategy, source, sources, tiny_model_dir):
    if source == "entry-point":
        install(sources)
    recipe = write(sources, f"{strategy}-{source}",
                   recipe_text(strategy, SLOTS, modules="slot_parts_local" if source == "module" else ""))
    provider = "grpo-slot-parts 0.1.0" if source == "entry-point" else "local module"
    code, out = invoke("validate", recipe)
    assert code == 0, out
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4")
    assert code == 0, out
    plan = json.loads(out)
    # two splits of two: 2 and 4 edges at steps 0 and 1, none trained from step 2 on (keep-early)
    assert [s["trained_edges"] for s in plan["per_step"]] == [2, 4, 0, 0]
    parts = plan["parts"]
    assert parts["topology"] == {"use": "two-splits", "branch": 2, "provided_by": provider,
                                 "chosen_by": "strategy.topology"}
    assert parts["advantage"]["use"] == "sign-advantage" and parts["advantage"]["tolerance"] == 1e-6
    assert [p["use"] for p in parts["pruner"]] == ["keep-early"] and parts["pruner"][0]["max_step"] == 2
    run = sources / f"run-{strategy}-{source}"
    sets = [a for s in SMALL for a in ("--set", s.format(model=tiny_model_dir))]
    code, out = invoke("run", recipe, "--out", run, "--quiet", *sets)
    assert code == 0, out
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    assert train[0]["cost/leaves"] == 2 * 4 and train[0]["cost/trained_edges"] == 2 * 6  # two trees
    resolved = tomllib.loads((run / "recipe.resolved.toml").read_text())
    assert resolved["parts"]["pruner"][0]["use"] == "keep-early"
    assert resolved["parts"]["advantage"]["provided_by"] == provider
    assert resolved["strategy"]["pruner"] == [{"use": "keep-early", "max_step": 2}]


def test_the_run_trains_with_the_recipes_advantage(sources, tiny_model_dir):
    """The advantages that reach the update are the replacement's: sign advantages are ±1 or 0."""
    data = tomllib.loads(recipe_text("dancegrpo", '[strategy.advantage]\nuse = "sign-advantage"\n',
                                     modules="slot_parts_local"))
    data["strategy"]["group_size"] = 4
    recipe = parse(data, load_registry(["slot_parts_local"]))
    part = recipe.composition.parts.advantage
    assert type(part).__name__ == "SignAdvantage"
    from grpo.testing import tiny_rollout

    ro, _, _ = tiny_rollout(recipe.composition.parts.topology.plan(4))
    adv = part(ro, ro.final.flatten(1).mean(1))
    assert set(adv.values[-1].unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_an_empty_pruner_list_means_no_pruning(tmp_path):
    recipe = write(tmp_path, "r", recipe_text("dancegrpo", "group_size = 3\npruner = []\n"))
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4")
    assert code == 0, out
    plan = json.loads(out)
    assert plan["parts"]["pruner"] == [] and [s["trained_edges"] for s in plan["per_step"]] == [3, 3, 3, 3]
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4", "--set", "strategy.timestep_fraction=0.5")
    assert code == 2 and "strategy.timestep_fraction: configures the default pruner" in out


def test_an_override_reaches_a_part_of_a_list(sources):
    recipe = write(sources, "r", recipe_text("branchgrpo", SLOTS, modules="slot_parts_local"))
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4", "--set", "strategy.pruner.0.max_step=1")
    assert code == 0, out
    assert [s["trained_edges"] for s in json.loads(out)["per_step"]] == [2, 0, 0, 0]


def test_builtin_parts_replace_slots_of_another_strategy(tmp_path):
    """BranchGRPO's depth pruner and width pruner, in order, on DanceGRPO's fan; DanceGRPO's group
    advantage on BranchGRPO's tree."""
    extra = ('group_size = 4\n[[strategy.pruner]]\nuse = "depth"\npruned_depths = [3, 4]\n'
             '[[strategy.pruner]]\nuse = "last-step"\n')
    code, out = invoke("plan", write(tmp_path, "d", recipe_text("dancegrpo", extra)), "--json",
                       "--set", "sampler.steps=5")
    assert code == 0, out
    assert [s["trained_edges"] for s in json.loads(out)["per_step"]] == [4, 4, 0, 0, 0]  # depths 3, 4 (steps 2, 3) and the last step dropped
    recipe = parse(tomllib.loads(recipe_text("branchgrpo", '[strategy.advantage]\nuse = "group"\n')), load_registry())
    assert type(recipe.composition.parts.advantage).__name__ == "GroupAdvantage"
    assert recipe.composition.records["topology"].name == "branching"


@pytest.mark.parametrize("extra,where,message", [
    ('[[strategy.pruner]]\nuse = "keep-early"\nmax_step = -1\n', "strategy.pruner.0.max_step", "-1 must be >= 1"),
    ('[strategy.advantage]\nuse = "sign-advantag"\n', "strategy.advantage.use", "did you mean 'sign-advantage'"),
    ('[strategy.advantage]\nuse = "jpeg-compressibility"\n', "strategy.advantage.use",
     "'jpeg-compressibility' is a reward, not an advantage estimator"),
    ('[strategy.topology]\nuse = "keep-early"\n', "strategy.topology.use", "'keep-early' is a pruner, not a topology"),
    ('[strategy.advantage]\nuse = "group"\nadvantage_clmp = 1\n', "strategy.advantage.advantage_clmp", "did you mean 'advantage_clamp'"),
    ('[strategy.advantage]\nfusion = "mean"\n', "strategy.advantage", "missing key 'use'"),
    ('pruner = "keep-early"\n', "strategy.pruner", "expected a list of pruner tables"),
    ('pruned_depths = [3]\n[[strategy.pruner]]\nuse = "keep-early"\n', "strategy.pruned_depths",
     "configures the default pruner of 'branchgrpo', which [[strategy.pruner]] replaces"),
    ('split_points = [0, 2]\n[strategy.topology]\nuse = "two-splits"\n', "strategy.split_points",
     "configures the default topology of 'branchgrpo', which [strategy.topology] replaces"),
])
def test_a_malformed_slot_is_one_message_naming_its_path(extra, where, message, sources):
    recipe = write(sources, "bad", recipe_text("branchgrpo", extra, modules="slot_parts_local"))
    for command in (["validate", recipe], ["run", recipe, "--out", sources / "never"]):
        code, out = invoke(*command)
        flat = " ".join(out.split())
        assert code == 2 and where in flat and message in flat and "Traceback" not in out, out
    assert not (sources / "never").exists()


def test_builtin_strategies_make_their_parts_by_name():
    """The default parts are the registered ones, each recorded with its options."""
    registry = load_registry()
    for name, expected in (("dancegrpo", ("fan", "group", ["timestep-fraction"])),
                           ("branchgrpo", ("branching", "depth-wise", [])),
                           ("branchgrpo-mix", ("branching", "depth-wise", []))):
        recipe = parse(tomllib.loads(recipe_text(name)), registry)
        rec = recipe.composition.records
        assert (rec["topology"].name, rec["advantage"].name, [p.name for p in rec["pruner"]]) == expected
        assert rec["topology"].chosen_by == "strategy" and rec["topology"].distribution == "grpo (built-in)"
    mix = parse(tomllib.loads(recipe_text("branchgrpo-mix", "window_size = 3\n")), registry)
    assert mix.composition.records["topology"].options["window_size"] == 3
    parts = registry.get("strategy", "branchgrpo").factory(width_ratio=0.5, train_last_step=False).build(default_make())
    assert [type(p).__name__ for p in parts.pruners] == ["WidthPruner", "LastStepPruner"]


def test_shipped_recipes_record_their_parts():
    root = Path(__file__).resolve().parents[2] / "recipes"
    recipe = parse(load_toml(root / "shapes_branch_widpru.toml"), load_registry())
    parts = recipe.composition.to_dict()
    assert [p["use"] for p in parts["pruner"]] == ["depth", "width"]
    assert parts["pruner"][1]["width_ratio"] == 0.5 and parts["pruner"][0]["pruned_depths"] == [11, 12, 13, 14, 15, 16]
