"""Plugin discovery: built-ins, entry points (a package installed on sys.path), recipe modules."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from grpo.core.errors import PluginError, UserError
from grpo.core.registry import load_registry

PLUGIN_SOURCE = textwrap.dedent(
    '''
    from typing import Annotated
    import torch
    from grpo.core.hookspecs import hookimpl
    from grpo.core.reward import RewardOutput
    from grpo.core.schema import Range

    class Brightness:
        """Mean pixel value: brighter is better."""
        media = "image"
        def __init__(self, *, gain: Annotated[float, Range(gt=0)] = 1.0) -> None:
            self.gain = gain
        def score(self, images, prompts):
            return RewardOutput(self.gain * images.flatten(1).mean(1))

    @hookimpl
    def grpo_register_reward(registry):
        registry.add("brightness", Brightness)
    '''
)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution `grpo-brightness` installed into a site directory with an entry point."""
    (tmp_path / "grpo_brightness.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / "grpo_brightness-0.3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: grpo-brightness\nVersion: 0.3.0\n")
    (dist / "entry_points.txt").write_text("[grpo]\nbrightness = grpo_brightness\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtins_are_registered():
    reg = load_registry(autoload=False)
    names = {e.name for e in reg.all()}
    assert {"dancegrpo", "dance-sde", "flow-sde", "ode", "shapes", "shapes-faithfulness", "jpeg-compressibility"} <= names
    assert reg.get("strategy", "dancegrpo").distribution == "grpo (built-in)"


def test_entry_point_plugin_is_discovered(installed_plugin):
    reg = load_registry()
    entry = reg.get("reward", "brightness")
    assert entry.distribution == "grpo-brightness 0.3.0"
    assert [o.name for o in entry.options] == ["gain"]
    assert "brightness" not in {e.name for e in load_registry(autoload=False).all()}


def test_entry_point_plugin_in_cli_listing(installed_plugin):
    env = {**os.environ, "PYTHONPATH": str(installed_plugin)}
    proc = subprocess.run([sys.executable, "-m", "grpo.cli.main", "plugins", "list", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["brightness"]["distribution"] == "grpo-brightness 0.3.0"
    assert {"dancegrpo", "dance-sde", "flow-sde", "ode", "shapes", "shapes-faithfulness", "jpeg-compressibility"} <= set(rows)
    env["GRPO_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run([sys.executable, "-m", "grpo.cli.main", "plugins", "list", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert "brightness" not in {r["name"] for r in json.loads(proc.stdout)}


def test_recipe_module_and_duplicate_names(tmp_path, monkeypatch):
    (tmp_path / "local_plugin.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "dup_plugin.py").write_text(PLUGIN_SOURCE.replace('"brightness"', '"shapes-faithfulness"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry(["local_plugin"], autoload=False)
    assert reg.get("reward", "brightness").distribution == "local module"
    with pytest.raises(PluginError, match="registered twice"):
        load_registry(["dup_plugin"], autoload=False)
    with pytest.raises(UserError, match="cannot import plugin module"):
        load_registry(["no_such_module_xyz"], autoload=False)


def test_misspelled_hook_and_untyped_option(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text(
        "from grpo.core.hookspecs import hookimpl\n@hookimpl\ndef grpo_register_rewards(registry):\n    pass\n"
    )
    (tmp_path / "untyped_plugin.py").write_text(
        "from grpo.core.hookspecs import hookimpl\nclass R:\n    def __init__(self, *, gain=1.0): pass\n"
        "@hookimpl\ndef grpo_register_reward(registry):\n    registry.add('r', R)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as e:
        load_registry(["typo_plugin"], autoload=False)
    # the plugin by name (not a module repr) and the closest hook, as docs/plugins.md promises
    assert "plugin 'typo_plugin' (local module) defines 'grpo_register_rewards'" in str(e.value)
    assert "did you mean 'grpo_register_reward'" in str(e.value) and "<module" not in str(e.value)
    with pytest.raises(PluginError, match="no type annotation"):
        load_registry(["untyped_plugin"], autoload=False)


def test_undecorated_misspelled_hook_is_refused(tmp_path, monkeypatch):
    (tmp_path / "plain_typo_plugin.py").write_text("def grpo_register_rewrd(registry):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="'grpo_register_rewrd', which is not a grpo hook.*grpo_register_reward"):
        load_registry(["plain_typo_plugin"], autoload=False)


BOOM = """
from grpo.core.hookspecs import hookimpl


class Boom:
    media = "image"

    def __init__(self, *, after: int = 0) -> None:
        pass

    def score(self, images, prompts):
        raise ValueError("the reward server said no")


@hookimpl
def grpo_register_reward(registry):
    registry.add("boom", Boom)
"""


def test_failure_inside_a_plugin_names_the_plugin(tmp_path, monkeypatch, tiny_model_dir):
    from typer.testing import CliRunner

    from grpo.cli.main import app

    (tmp_path / "boom_plugin.py").write_text(BOOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[plugins]\nmodules = ["boom_plugin"]\n[model]\nuse = "shapes"\npath = "{tiny_model_dir}"\n'
                      '[strategy]\nuse = "dancegrpo"\ngroup_size = 2\n[sampler]\nuse = "dance-sde"\nsteps = 2\n'
                      '[[reward]]\nuse = "boom"\n[prompts]\nuse = "shapes"\n[train]\nprompts_per_iteration = 1\n'
                      '[eval]\nevery = 0\n')
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1
    assert ("reward 'boom' from plugin 'boom_plugin' (local module) failed in score(): ValueError: the reward "
            "server said no") in result.output
    assert "Traceback" not in result.output


def test_what_a_factory_declares_is_read_once_into_its_entry():
    """Class attributes or keywords of registry.add: the entry holds them; nothing reads the factory later."""
    from grpo.core.hookspecs import hookimpl

    class Declared:
        requires = ("numpy",)
        sources = {"path": "somewhere"}

        def __init__(self, *, path: str = "") -> None:
            self.path = path

    @hookimpl
    def grpo_register_prompts(registry):
        registry.add("declared", Declared)
        registry.add("given", Declared, requires=("scipy",), hub_patterns={"path": ["*.json"]})

    reg = load_registry(autoload=False, plugins=[grpo_register_prompts])
    declared, given = reg.get("prompts", "declared"), reg.get("prompts", "given")
    assert declared.requires == ("numpy",) and declared.sources == {"path": "somewhere"} and declared.hub_patterns == {}
    assert given.requires == ("scipy",) and given.hub_patterns == {"path": ("*.json",)} and given.sources == {"path": "somewhere"}
    shapes = reg.get("model", "shapes")
    assert shapes.bundled and shapes.noise_grid_for is not None and "diffusers" in shapes.requires

    @hookimpl
    def grpo_register_reward(registry):
        registry.add("odd", Declared, weights="x")

    with pytest.raises(PluginError, match="registry.add\\(\\) got 'weights'"):
        load_registry(autoload=False, plugins=[grpo_register_reward])
