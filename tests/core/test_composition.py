"""A recipe chooses every part of a strategy by name. Parts from a third-party package (entry point) or
a ``[plugins] modules`` module fill the slots of each built-in strategy, an objective among them; a
strategy is a preset whose options are its parts'; every malformed slot is one exit-2 message naming
its path, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.cli.scaffold import COMPONENTS
from grpo.core.errors import PluginError, UserErrors
from grpo.core.recipe import load_toml, parse
from grpo.core.registry import load_registry
from grpo.core.strategy import Part, Preset
from grpo.core.tomlfile import tomllib

# the objective is the one `grpo plugins new objective` writes: reward-weighted flow matching on re-noised leaves
PARTS = COMPONENTS["objective"].format(cls="WeightedLeaves") + '''
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


class Midpoint:
    """Euler, exact on straight flows (a solver from a plugin)."""

    uses_previous = False

    def __init__(self) -> None:
        pass

    def step(self, x, v, x0, sigma, sigma_next, previous):
        return (x + (sigma_next - sigma).view(-1, *([1] * (x.dim() - 1))) * v).float()


@hookimpl
def grpo_register_pruner(registry):
    registry.add("keep-early", KeepEarly)


@hookimpl
def grpo_register_advantage(registry):
    registry.add("sign-advantage", SignAdvantage)


@hookimpl
def grpo_register_topology(registry):
    registry.add("two-splits", TwoSplits)


@hookimpl
def grpo_register_objective(registry):
    registry.add("weighted-leaves", WeightedLeaves)


@hookimpl
def grpo_register_solver(registry):
    registry.add("plugin-euler", Midpoint)
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
STRATEGIES = ["dancegrpo", "branchgrpo", "branchgrpo-mix", "flow-grpo", "flow-grpo-fast", "mixgrpo", "mixgrpo-flash"]
# what makes each strategy's tree small enough for the tiny model's 4 steps
SMALL_TREE = {"branchgrpo": ["strategy.split_points=[0, 2]"], "branchgrpo-mix": ["strategy.split_points=[0, 2]"],
              "flow-grpo-fast": ["strategy.group_size=3", "strategy.window_size=2", "strategy.window_range=[0, 3]"]}
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


def sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


@pytest.mark.parametrize("source", ["entry-point", "module"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_third_party_objective_trains_with_every_builtin_strategy(strategy, source, sources, tiny_model_dir):
    """validate, plan and one iteration of `grpo run`, each with the objective from the package or the
    module; the run records it, and it trains on its own units (samples, not edges)."""
    if source == "entry-point":
        install(sources)
    extra = '[strategy.objective]\nuse = "weighted-leaves"\ndraws = 2\n'
    recipe = write(sources, f"{strategy}-{source}",
                   recipe_text(strategy, extra, modules="slot_parts_local" if source == "module" else "")
                   .replace("clip_range = 1e-3\n", ""))
    provider = "grpo-slot-parts 0.1.0" if source == "entry-point" else "local module"
    small = SMALL_TREE.get(strategy, ["strategy.group_size=3"])
    code, out = invoke("validate", recipe, *sets(*small, "sampler.steps=4"))
    assert code == 0, out
    code, out = invoke("plan", recipe, "--json", *sets(*small, "sampler.steps=4"))
    assert code == 0, out
    plan = json.loads(out)
    assert plan["parts"]["objective"]["use"] == "weighted-leaves" and plan["parts"]["objective"]["provided_by"] == provider
    assert plan["unit"] == "samples" and plan["units_per_tree"] == 2 * plan["leaves_per_tree"]
    run = sources / f"run-{strategy}-{source}"
    code, out = invoke("run", recipe, "--out", run, "--quiet", *sets(*small, *(s.format(model=tiny_model_dir) for s in SMALL)))
    assert code == 0, out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in records if r["kind"] == "train")
    assert train["update/trained_samples"] == train["cost/trained_samples"] == 2 * train["cost/leaves"]
    assert "update/mse" in train and "update/ratio_mean" not in train and train["update/optimizer_steps"] >= 1
    resolved = tomllib.loads((run / "recipe.resolved.toml").read_text())
    assert resolved["strategy"]["objective"] == {"use": "weighted-leaves", "draws": 2}
    assert resolved["parts"]["objective"] == {"use": "weighted-leaves", "provided_by": provider,
                                              "chosen_by": "strategy.objective"}


def test_an_objective_on_the_leaves_rolls_out_with_the_ode_sampler_and_keeps_no_states(sources, tiny_model_dir):
    """Independent chains, every step deterministic (the plugin's own solver): the rollout keeps only the
    leaves' clean samples; the clipped ratio, which needs per-step densities, is refused with it."""
    import torch

    from grpo.core.components import build_parts
    from grpo.testing import tiny_rollout

    extra = ('[strategy.topology]\nuse = "chains"\ngroup_size = 3\n\n[strategy.objective]\nuse = "weighted-leaves"\n\n'
             '[strategy.solver]\nuse = "plugin-euler"\n\n[sampler]\nuse = "ode"\nsteps = 4\n')
    text = recipe_text("dancegrpo", extra, modules="slot_parts_local").replace("clip_range = 1e-3\n", "")
    recipe = parse(tomllib.loads(text), load_registry(["slot_parts_local"]))
    parts = build_parts(recipe)
    plan = parts.plan(4)
    assert not any(plan.stochastic) and parts.keep.states is False and parts.keep.log_prob is False
    ro, _, _ = tiny_rollout(plan, sampler=parts.sampler, keep=parts.keep, solver=parts.solvers[""])
    assert all(s.numel() == 0 for s in ro.states) and [s.shape[0] for s in ro.states] == [6] * 5
    assert ro.final.shape == (6, 3, 32, 32) and torch.isfinite(ro.final).all()
    assert all(torch.isnan(lp).all() for lp in ro.log_prob) and ro.means == []
    run = sources / "run-ode"
    code, out = invoke("run", write(sources, "ode", text), "--out", run, "--quiet",
                       *sets(*(s.format(model=tiny_model_dir) for s in SMALL)))
    assert code == 0, out
    train = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x)
    assert train["update/trained_samples"] == 2 * 6 and train["cost/rollout_forwards"] == 2 * 3 * 4
    code, out = invoke("validate", write(sources, "ode-ratio", text.replace('use = "weighted-leaves"\n', "")))
    flat = " ".join(out.split())
    assert code == 2 and "sampler.use" in flat and "objective 'clipped-ratio' trains on per-step" in flat, out


@pytest.mark.parametrize("strategy", ["dancegrpo", "branchgrpo"])
def test_third_party_parts_fill_every_slot_of_a_builtin_strategy(strategy, sources, tiny_model_dir):
    install(sources)
    recipe = write(sources, strategy, recipe_text(strategy, SLOTS))
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4")
    assert code == 0, out
    plan = json.loads(out)
    # two splits of two: 2 and 4 edges at steps 0 and 1, none trained from step 2 on (keep-early)
    assert [s["trained_edges"] for s in plan["per_step"]] == [2, 4, 0, 0]
    parts = plan["parts"]
    assert parts["topology"] == {"use": "two-splits", "branch": 2, "provided_by": "grpo-slot-parts 0.1.0",
                                 "chosen_by": "strategy.topology"}
    assert parts["advantage"]["use"] == "sign-advantage" and parts["advantage"]["tolerance"] == 1e-6
    assert [p["use"] for p in parts["pruner"]] == ["keep-early"] and parts["pruner"][0]["max_step"] == 2
    assert parts["objective"]["use"] == "clipped-ratio" and parts["objective"]["clip_range"] == 1e-3
    assert parts["objective"]["chosen_by"] == "strategy"
    run = sources / f"run-{strategy}"
    code, out = invoke("run", recipe, "--out", run, "--quiet", *sets(*(s.format(model=tiny_model_dir) for s in SMALL)))
    assert code == 0, out
    train = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x)
    assert train["cost/leaves"] == 2 * 4 and train["cost/trained_edges"] == 2 * 6  # two trees
    resolved = tomllib.loads((run / "recipe.resolved.toml").read_text())
    assert resolved["strategy"]["pruner"] == [{"use": "keep-early", "max_step": 2}]


def test_a_short_key_is_the_parts_own_option():
    """`strategy.split_points` and `[strategy.topology] split_points` resolve to the same recipe; a key
    several parts take is set on each; the preset's own values fill the rest."""
    registry = load_registry()
    short = parse(tomllib.loads(recipe_text("branchgrpo", "split_points = [0, 4]\npruning_fraction = 0.5\n")), registry)
    table = parse(tomllib.loads(recipe_text("branchgrpo", "[strategy.topology]\nsplit_points = [0, 4]\n"
                                            "[[strategy.pruner]]\npruning_fraction = 0.5\n"
                                            "[[strategy.pruner]]\npruning_fraction = 0.5\n")), registry)
    assert short.to_dict()["strategy"] == table.to_dict()["strategy"]
    s = short.strategy
    assert s.topology.options["split_points"] == [0, 4] and s.topology.options["split_noise_scale"] == 4.0
    assert [p.options["pruning_fraction"] for p in s.pruners] == [0.5, 0.5]  # depth and width both take it
    assert s.topology.origins == {"split_points": "strategy.split_points"}
    assert table.strategy.topology.origins == {"split_points": "strategy.topology.split_points"}


def test_using_the_presets_own_part_keeps_its_options_and_another_part_starts_from_its_defaults():
    registry = load_registry()
    same = parse(tomllib.loads(recipe_text("dancegrpo", '[strategy.topology]\nuse = "fan"\n')), registry)
    assert same.strategy.topology.options["group_size"] == 12  # the preset's, not the fan's default 16
    other = parse(tomllib.loads(recipe_text("dancegrpo", '[strategy.topology]\nuse = "chains"\n')), registry)
    assert other.strategy.topology.options == {"group_size": 24, "same_latent": False}  # chains' own defaults
    assert other.strategy.topology.chosen_by == "strategy.topology" and same.strategy.advantage.chosen_by == "strategy"


def test_an_empty_pruner_list_means_no_pruning(tmp_path):
    recipe = write(tmp_path, "r", recipe_text("dancegrpo", "group_size = 3\npruner = []\n"))
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4")
    assert code == 0, out
    plan = json.loads(out)
    assert plan["parts"]["pruner"] == [] and [s["trained_edges"] for s in plan["per_step"]] == [3, 3, 3, 3]
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4", "--set", "strategy.timestep_fraction=0.5")
    assert code == 2 and "strategy.timestep_fraction: configures the pruner of strategy 'dancegrpo'" in out, out


def test_an_override_reaches_a_part_of_a_list(sources):
    recipe = write(sources, "r", recipe_text("branchgrpo", SLOTS, modules="slot_parts_local"))
    code, out = invoke("plan", recipe, "--json", "--set", "sampler.steps=4", "--set", "strategy.pruner.0.max_step=1")
    assert code == 0, out
    assert [s["trained_edges"] for s in json.loads(out)["per_step"]] == [2, 0, 0, 0]
    # without [[strategy.pruner]], an index changes the strategy's own pruner at that position
    plain = write(sources, "plain", recipe_text("branchgrpo", "split_points = [0, 2]\n"))
    code, out = invoke("plan", plain, "--json", "--set", "sampler.steps=4", "--set", "strategy.pruner.0.pruned_depths=[4]")
    assert code == 0, out
    assert [s["trained_edges"] for s in json.loads(out)["per_step"]] == [2, 2, 4, 0]


def test_builtin_parts_replace_slots_of_another_strategy(tmp_path):
    """BranchGRPO's depth pruner and the last-step pruner, in order, on DanceGRPO's fan; DanceGRPO's
    group advantage on BranchGRPO's tree."""
    extra = ('group_size = 4\n[[strategy.pruner]]\nuse = "depth"\npruned_depths = [3, 4]\n'
             '[[strategy.pruner]]\nuse = "last-step"\n')
    code, out = invoke("plan", write(tmp_path, "d", recipe_text("dancegrpo", extra)), "--json",
                       "--set", "sampler.steps=5")
    assert code == 0, out
    assert [s["trained_edges"] for s in json.loads(out)["per_step"]] == [4, 4, 0, 0, 0]  # depths 3, 4 (steps 2, 3) and the last step dropped
    recipe = parse(tomllib.loads(recipe_text("branchgrpo", '[strategy.advantage]\nuse = "group"\n')), load_registry())
    assert recipe.strategy.advantage.entry.name == "group" and recipe.strategy.topology.entry.name == "branching"


@pytest.mark.parametrize("extra,where,message", [
    ('[[strategy.pruner]]\nuse = "keep-early"\nmax_step = -1\n', "strategy.pruner.0.max_step", "-1 must be >= 1"),
    ('[strategy.advantage]\nuse = "sign-advantag"\n', "strategy.advantage.use", "did you mean 'sign-advantage'"),
    ('[strategy.advantage]\nuse = "jpeg-compressibility"\n', "strategy.advantage.use",
     "'jpeg-compressibility' is a reward, not an advantage estimator"),
    ('[strategy.topology]\nuse = "keep-early"\n', "strategy.topology.use", "'keep-early' is a pruner, not a topology"),
    ('[strategy.advantage]\nuse = "group"\nadvantage_clmp = 1\n', "strategy.advantage.advantage_clmp",
     "did you mean 'advantage_clamp'"),
    ('pruner = "keep-early"\n', "strategy.pruner", "expected a list of pruner tables"),
    ('pruned_depths = [3]\n[[strategy.pruner]]\nuse = "keep-early"\n', "strategy.pruned_depths",
     "configures the pruner of strategy 'branchgrpo', which [[strategy.pruner]] replaces"),
    ('split_points = [0, 2]\n[strategy.topology]\nuse = "two-splits"\n', "strategy.split_points",
     "configures the topology of strategy 'branchgrpo', which [strategy.topology] replaces"),
    # the objective slot
    ('[strategy.objective]\nuse = "depth"\n', "strategy.objective.use", "'depth' is a pruner, not an objective"),
    ('[strategy.objective]\nuse = "clipped-ratoi"\n', "strategy.objective.use", "did you mean 'clipped-ratio'"),
    ('[strategy.objective]\nkl_beta = -1.0\n', "strategy.objective.kl_beta", "-1.0 must be >= 0"),
    ('[strategy.objective]\nkl_form = "exact"\n', "strategy.objective.kl_form", "'exact' is not a valid choice"),
    ('[strategy.objective]\nuse = "weighted-leaves"\n', "strategy.clip_range",
     "configures the objective of strategy 'branchgrpo', which [strategy.objective] replaces"),
    ('[strategy.solver]\nuse = "dpm-solver"\n', "strategy.solver.use", "did you mean 'dpm-solver++'"),
    # where a part's own check reports
    ('split_points = [0, 9]\n', "strategy.split_points", "below sampler.steps"),
    ('[strategy.topology]\nsplit_points = [0, 9]\n', "strategy.topology.split_points", "below sampler.steps"),
    ('[strategy.topology]\nuse = "sde-window"\nwindow_range = [0, 9]\n', "strategy.topology.window_range",
     "leaves no step"),
    ('[[strategy.pruner]]\nuse = "timestep-fraction"\nstep_window = [3, 1]\n', "strategy.pruner.0.step_window",
     "start < stop"),
    ('split_points = [0, 2]\n[[strategy.pruner]]\nuse = "depth"\npruned_depths = [9]\n', "strategy.pruner.0.pruned_depths",
     "beyond a tree"),
    # keys that moved or were renamed, and keys no part takes
    ('kl_form = "flow-grpo"\n[strategy.objective]\nkl_form = "gaussian"\n', "strategy.kl_form", "set twice"),
    ('depth_pruning = [3]\n', "strategy.depth_pruning", "'depth_pruning' was renamed 'pruned_depths'"),
    ('train_last_step = false\n', "strategy.train_last_step", "last-step"),
    ('zzz = 1\n', "strategy.zzz", "no part of strategy 'branchgrpo' takes 'zzz'"),
    ('split_pionts = [0, 2]\n', "strategy.split_pionts", "did you mean 'split_points'"),
])
def test_a_malformed_slot_is_one_message_naming_its_path(extra, where, message, sources):
    recipe = write(sources, "bad", recipe_text("branchgrpo", extra, modules="slot_parts_local"))
    for command in (["validate", recipe, "--set", "sampler.steps=4"],
                    ["run", recipe, "--out", sources / "never", "--set", "sampler.steps=4"]):
        code, out = invoke(*command)
        flat = " ".join(out.split())
        assert code == 2 and where in flat and message in flat and "Traceback" not in out, out
        assert "problems" not in flat, out  # one message, not several about tables the user never wrote
    assert not (sources / "never").exists()


@pytest.mark.parametrize("key,value,new", [("kl_form", '"flow-grpo"', "[strategy.objective] kl_form"),
                                           ("grpo_guard", "true", "[strategy.objective] grpo_guard"),
                                           ("kl_beta", "0.1", "[strategy.objective] kl_beta")])
def test_train_keys_that_moved_name_their_new_place(key, value, new, tmp_path):
    recipe = write(tmp_path, "r", recipe_text("dancegrpo") + f"\n[train]\n{key} = {value}\n")
    code, out = invoke("run", recipe, "--out", tmp_path / "never")
    flat = " ".join(out.split())
    assert code == 2 and f"train.{key}" in flat and new in flat and "Traceback" not in out, out
    assert not (tmp_path / "never").exists()


def test_an_index_into_pruners_the_recipe_does_not_have_is_one_message(tmp_path):
    recipe = write(tmp_path, "r", recipe_text("dancegrpo"))
    code, out = invoke("validate", recipe, "--set", "strategy.pruner.0.max_step=3")
    flat = " ".join(out.split())
    assert code == 2 and "strategy.pruner.0.max_step: unknown key 'max_step'" in flat and "problems" not in flat, out
    code, out = invoke("validate", recipe, "--set", "strategy.pruner.1.keep=3")
    flat = " ".join(out.split())
    assert code == 2 and "strategy.pruner.1" in flat and "has 1 pruner(s) (timestep-fraction)" in flat, out


def test_strategies_declare_no_option_of_their_own():
    """Walks the registry: a strategy is a preset whose options are all its parts'; none is declared
    both by a strategy and by a part, and every option a preset gives is one its part declares."""
    registry = load_registry()
    for entry in registry.entries["strategy"].values():
        preset = entry.factory
        assert isinstance(preset, Preset) and entry.options == [], entry.name
        parts = [("topology", preset.topology), ("advantage", preset.advantage), ("objective", preset.objective),
                 ("solver", preset.solver), ("sampler", preset.sampler), *(("pruner", p) for p in preset.pruners)]
        for kind, part in parts:
            declared = {o.name for o in registry.get(kind, part.name).options}
            assert set(part.options) <= declared, (entry.name, kind, part.name, set(part.options) - declared)
            assert not {o.name for o in entry.options} & declared


def test_a_strategy_that_is_not_a_preset_is_refused():
    from grpo.core.hookspecs import hookimpl

    class OldStyle:
        def __init__(self, *, group_size: int = 8) -> None:
            self.group_size = group_size

    @hookimpl
    def grpo_register_strategy(registry):
        registry.add("old-style", OldStyle)

    with pytest.raises(PluginError, match="a strategy is registered as a grpo.core.strategy.Preset"):
        load_registry(plugins=[grpo_register_strategy])


def test_named_variants_are_presets_derived_from_their_base():
    registry = load_registry()
    mix, flash = registry.get("strategy", "mixgrpo").factory, registry.get("strategy", "mixgrpo-flash").factory
    assert flash.topology == mix.topology.with_options(iters_per_window=20, flash_ratio=0.4)
    assert (flash.advantage, flash.objective, flash.sampler) == (mix.advantage, mix.objective, mix.sampler)
    fast, flow = registry.get("strategy", "flow-grpo-fast").factory, registry.get("strategy", "flow-grpo").factory
    assert fast.objective == Part("clipped-ratio", clip_range=1e-5, kl_beta=0.0, kl_form="flow-grpo")
    assert fast.train == flow.train and fast.pruners == ()
    branch, branch_mix = registry.get("strategy", "branchgrpo").factory, registry.get("strategy", "branchgrpo-mix").factory
    assert branch_mix.topology.options["window_size"] == 4 and branch_mix.pruners == branch.pruners
    with pytest.raises(TypeError, match="unknown slot"):
        mix.derive(tree={"a": 1})


def test_a_presets_train_defaults_sit_under_the_recipes(tmp_path):
    registry = load_registry()
    flow = parse(tomllib.loads(recipe_text("flow-grpo")), registry)
    assert (flow.train.ema_decay, flow.train.ema_every) == (0.9, 8)
    mine = parse(tomllib.loads(recipe_text("flow-grpo") + "\n[train]\nema_decay = 0.5\n"), registry)
    assert (mine.train.ema_decay, mine.train.ema_every) == (0.5, 8)


def test_shipped_recipes_record_their_parts():
    root = Path(__file__).resolve().parents[2] / "recipes"
    recipe = parse(load_toml(root / "shapes_branch_widpru.toml"), load_registry())
    table = recipe.strategy.table()
    assert [p["use"] for p in table["pruner"]] == ["depth", "width"]
    assert table["pruner"][1]["width_ratio"] == 0.5 and table["pruner"][0]["pruned_depths"] == [11, 12, 13, 14, 15, 16]
    assert table["objective"] == {"use": "clipped-ratio", "clip_range": 1e-3, "kl_beta": 0.5, "kl_form": "gaussian",
                                  "grpo_guard": False, "guard_bias": "micro-batch", "split_logprob": "nominal",
                                  "trust_region": "clip", "dppo_threshold": 1e-5, "dppo_scaled": True}
    again = parse({**recipe.to_dict(), "parts": recipe.strategy.records()}, load_registry())
    assert again.to_dict() == recipe.to_dict()  # a resolved recipe reads back as itself


def test_parse_collects_errors_of_several_tables():
    with pytest.raises(UserErrors) as e:
        parse(tomllib.loads(recipe_text("branchgrpo", "split_points = 3\n") + '\n[train]\nlr = -1.0\n'), load_registry())
    assert sorted(err.where for err in e.value.errors) == ["strategy.split_points", "train.lr"]
