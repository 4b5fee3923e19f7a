"""`grpo plugins new` for a part (pruner, advantage, topology, objective, solver) and a strategy: the
package's recipe uses the new component by name (a part in a slot of a built-in strategy), keeps its
contract, and runs (fast: the generated module is imported from its source folder instead of
installing the package)."""

from __future__ import annotations

import importlib
import sys

import pytest
from typer.testing import CliRunner

import grpo.testing as gt
from grpo.cli.main import app
from grpo.core.recipe import load_toml
from grpo.testing import run_tiny_recipe

CONTRACTS = {
    "pruner": lambda made, plugin: gt.check_pruner(made()),
    "advantage": lambda made, plugin: gt.check_advantage(made()),
    "topology": lambda made, plugin: gt.check_topology(made()),
    "objective": lambda made, plugin: gt.check_objective(made()),
    "solver": lambda made, plugin: gt.check_solver(made()),
    "strategy": lambda made, plugin: gt.check_strategy(made, steps=4, plugins=[plugin]),
}


@pytest.mark.parametrize("kind,slot", [("pruner", "[[strategy.pruner]]"), ("advantage", "[strategy.advantage]"),
                                       ("topology", "[strategy.topology]"), ("objective", "[strategy.objective]"),
                                       ("solver", "[strategy.solver]"), ("strategy", "[strategy]")])
def test_a_scaffolded_part_runs_in_a_builtin_strategy(kind, slot, tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    result = CliRunner().invoke(app, ["plugins", "new", kind, f"my-{kind}", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    recipe = folder / "recipes" / f"my_{kind}.toml"
    strategy = load_toml(recipe)["strategy"]["use"]
    assert slot in recipe.read_text() and strategy in ("dancegrpo", "branchgrpo", "branchgrpo-mix", f"my-{kind}")
    test = (folder / "tests" / f"test_my_{kind}.py").read_text()
    assert "run_tiny_recipe(RECIPE" in test  # the package's own test runs the recipe
    pyproject = (folder / "pyproject.toml").read_text()
    assert 'dependencies = ["grpo>=0.2,<0.3"]' in pyproject  # the pin docs/plugins.md recommends
    monkeypatch.syspath_prepend(str(folder / "src"))
    plugin = importlib.import_module(f"grpo_my_{kind}.plugin")
    component = importlib.import_module(f"grpo_my_{kind}.component")
    made = vars(component)[f"My{kind.capitalize()}"]
    try:
        CONTRACTS[kind](made, plugin)  # what the package's own test checks
        records = run_tiny_recipe(recipe, tmp_path / "run", plugins=[plugin])
    finally:
        for name in [m for m in sys.modules if m.startswith(f"grpo_my_{kind}")]:
            del sys.modules[name]
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [0]
