"""`grpo doctor` on the embedded recipes says what it checked: the bundled weights, the packages the
components import, the torch build and the threads; a package a component needs and lacks fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from grpo.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
SHAPES = sorted((ROOT / "recipes").glob("shapes_*.toml"))


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args], terminal_width=200)
    return result.exit_code, result.output


@pytest.mark.parametrize("recipe", SHAPES, ids=lambda p: p.name)
def test_doctor_lists_what_it_checked_on_the_embedded_recipes(recipe, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, out = doctor(str(recipe))
    assert code == 0, out
    for text in ("bundled weights", "package diffusers", "package transformers", "package scipy", "torch",
                 "threads", f"torch uses {torch.get_num_threads()} of"):
        assert text in out, (text, out)
    assert "all 0 checks" not in out and "checks passed" in out
    n = int(out.split("all ")[-1].split(" checks")[0])
    assert n >= 7


def test_doctor_names_a_model_folder_that_is_not_there(tmp_path):
    code, out = doctor(str(ROOT / "recipes" / "shapes_dance.toml"), "--set", f"model.path='{tmp_path / 'none'}'")
    assert code == 2 and "does not exist" in out and "│ bundled weights" not in out


def test_doctor_fails_on_a_package_a_component_needs(tmp_path, monkeypatch):
    (tmp_path / "needy_reward.py").write_text('''
from grpo.core.hookspecs import hookimpl
from grpo.plugins.shapes.rewards import JpegCompressibility


class Needy(JpegCompressibility):
    """A reward that imports a package nobody has."""

    requires = ("grpo_surely_absent_package",)


@hookimpl
def grpo_register_reward(registry):
    registry.add("needy", Needy)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.toml"
    recipe.write_text((ROOT / "recipes" / "shapes_dance.toml").read_text().replace(
        'use = "shapes-faithfulness"', 'use = "needy"') + '\n[plugins]\nmodules = ["needy_reward"]\n')
    assert 'use = "needy"' in recipe.read_text()
    code, out = doctor(str(recipe))
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if "reward.0.use" in line)  # the table folds long cells
    row = " ".join(lines[i:i + 3]).replace("│", " ")
    assert code == 2 and row.split()[0] == "missing" and "pip install" in row and "grpo_surely_absent" in row
