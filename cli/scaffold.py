"""`grpo plugins new KIND NAME`: a ready-to-install plugin package with a passing test.

Each kind's template is a small working component (not an empty shell), registered through the
entry point, with a test that runs grpo.testing's contract check and, where a recipe can use the
component directly, a one-iteration run of a recipe that names it.
"""

from __future__ import annotations

import re
from pathlib import Path

from grpo.core.errors import UserError, unknown_name_hint

PYPROJECT = '''[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "grpo-{name}"
version = "0.1.0"
description = "A grpo {kind} plugin: {name}."
requires-python = ">=3.10"
dependencies = ["grpo>=0.1,<0.2"]  # the plugin API may change in minor versions before 1.0

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.grpo]
{module} = "{package}.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

PLUGIN = '''"""Registers this package's components with grpo (found through the `grpo` entry-point group)."""

from grpo.core.hookspecs import hookimpl


@hookimpl
def grpo_register_{kind}(registry):
    from .component import {cls}

    registry.add("{name}", {cls})
'''

COMPONENTS = {
    "reward": '''"""A reward model: scores images in [0, 1] against their prompts."""

from typing import Annotated

import torch

from grpo.core.reward import RewardOutput
from grpo.core.schema import Doc, Range


class {cls}:
    """Mean brightness of an image, raised to `power` (replace with your own score)."""

    media = "image"

    def __init__(self, *, power: Annotated[float, Range(gt=0), Doc("exponent of the brightness")] = 1.0) -> None:
        self.power = power

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        brightness = images.float().clamp(0, 1).flatten(1).mean(dim=1)
        return RewardOutput(brightness**self.power, {{"brightness": brightness}})
''',
    "pruner": '''"""A pruner: chooses which of the given edges are trained."""

from typing import Annotated

import torch

from grpo.core.pruner import PruneContext
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout


class {cls}:
    """Keep a random share of the given edges at every step (drawn with the iteration's generator)."""

    def __init__(self, *, keep: Annotated[float, Range(gt=0, le=1), Doc("share of edges kept")] = 0.5) -> None:
        self.keep = keep

    def __call__(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: PruneContext) -> EdgeSet:
        return EdgeSet([m & (torch.rand(m.shape, generator=ctx.generator) < self.keep) for m in edges.masks])
''',
    "advantage": '''"""An advantage estimator: leaf rewards to one advantage per edge."""

from typing import Annotated

import torch

from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, Rollout


class {cls}:
    """Reward minus the mean of its tree's leaves, divided by `scale`; an edge carries the mean over its leaves."""

    def __init__(self, *, scale: Annotated[float, Range(gt=0), Doc("divide advantages by this")] = 1.0) -> None:
        self.scale = scale

    def __call__(self, rollout: Rollout, rewards: torch.Tensor) -> Advantages:
        per_tree = rewards.float().reshape(rollout.num_trees, rollout.plan.leaves)
        leaf = ((per_tree - per_tree.mean(dim=1, keepdim=True)) / self.scale).reshape(-1)
        return Advantages([rollout.reduce_leaves(leaf, k + 1) for k in range(rollout.steps)])
''',
    "strategy": '''"""A strategy: a named composition of registered parts (topology, advantage estimator, pruners)
and its loss settings."""

from typing import Annotated

from grpo.core.schema import Doc, Part, Range
from grpo.core.strategy import Make, StrategyParts


class {cls}:
    """G chains per prompt from shared noise, group advantages, a random share of steps trained."""

    def __init__(
        self,
        *,
        group_size: Annotated[int, Range(ge=2), Part("topology"), Doc("chains per prompt")] = 8,
        timestep_fraction: Annotated[float, Range(gt=0, le=1), Part("pruner"), Doc("share of steps trained")] = 0.5,
        clip_range: Annotated[float, Range(gt=0), Doc("ε of the clipped ratio")] = 1e-3,
    ) -> None:
        self.group_size, self.timestep_fraction, self.clip_range = group_size, timestep_fraction, clip_range

    def build(self, make: Make) -> StrategyParts:
        # every part by kind and registered name: built-in or from any installed plugin
        return StrategyParts(
            topology=make("topology", "fan", group_size=self.group_size, noise_scale=1.0),
            advantage=make("advantage", "group"),
            pruners=[make("pruner", "timestep-fraction", timestep_fraction=self.timestep_fraction)],
            clip_range=self.clip_range,
            sampler="dance-sde",
        )
''',
    "topology": '''"""A tree topology: which steps split, into how many children, with what noise."""

from typing import Annotated

from grpo.core.schema import Doc, Range
from grpo.core.tree import TreePlan


class {cls}:
    """Split once into `branch` children at step `at`; every step stochastic."""

    def __init__(
        self,
        *,
        branch: Annotated[int, Range(ge=2), Doc("children at the split")] = 4,
        at: Annotated[int, Range(ge=0), Doc("the split step")] = 0,
    ) -> None:
        self.branch, self.at = branch, at

    def plan(self, steps: int, iteration: int = 0) -> TreePlan:
        at = min(self.at, steps - 1)
        return TreePlan(tuple(self.branch if k == at else 1 for k in range(steps)), (1.0,) * steps, (True,) * steps)
''',
    "sampler": '''"""A sampler: the σ grid and each step's Gaussian (mean μ, std τ)."""

from typing import Annotated

import torch

from grpo.core.sampler import euler_step, sigma_grid
from grpo.core.schema import Doc, Range


class {cls}:
    """Euler steps of the flow ODE plus Gaussian noise of std `noise`·√(σ − σ_next)."""

    stochastic = True

    def __init__(
        self,
        *,
        steps: Annotated[int, Range(ge=1), Doc("denoising steps")] = 16,
        shift: Annotated[float, Range(gt=0), Doc("timestep shift of the σ grid")] = 1.0,
        noise: Annotated[float, Range(gt=0), Doc("noise scale")] = 0.3,
    ) -> None:
        self.steps, self.shift, self.noise = steps, shift, noise

    def sigmas(self) -> torch.Tensor:
        return sigma_grid(self.steps, self.shift)

    def step(self, x, v, sigma, sigma_next):
        mean = euler_step(x, v, sigma, sigma_next)
        return mean, self.noise * torch.sqrt((sigma - sigma_next).clamp_min(0))
''',
}

CHECKS = {
    "reward": ("check_reward", "{cls}()"),
    "pruner": ("check_pruner", "{cls}()"),
    "advantage": ("check_advantage", "{cls}()"),
    "strategy": ("check_strategy", "{cls}(group_size=3)"),
    "topology": ("check_topology", "{cls}()"),
    "sampler": ("check_sampler", "{cls}(steps=4)"),
}

# a recipe that uses the new component by name (kinds a recipe names directly)
RECIPES = {
    "reward": '[strategy]\nuse = "dancegrpo"\ngroup_size = 3\n\n[[reward]]\nuse = "{name}"\n',
    "strategy": '[strategy]\nuse = "{name}"\ngroup_size = 3\n\n[[reward]]\nuse = "shapes-faithfulness"\n',
    "sampler": '[strategy]\nuse = "dancegrpo"\ngroup_size = 3\n\n[sampler]\nuse = "{name}"\n\n'
               '[[reward]]\nuse = "shapes-faithfulness"\n',
    # a part replaces one slot of a built-in strategy
    "pruner": '[strategy]\nuse = "branchgrpo"\nsplit_points = [0, 2]\n\n[[strategy.pruner]]\nuse = "{name}"\n\n'
              '[[reward]]\nuse = "shapes-faithfulness"\n',
    "advantage": '[strategy]\nuse = "dancegrpo"\ngroup_size = 3\n\n[strategy.advantage]\nuse = "{name}"\n\n'
                 '[[reward]]\nuse = "shapes-faithfulness"\n',
    "topology": '[strategy]\nuse = "branchgrpo"\n\n[strategy.topology]\nuse = "{name}"\n\n'
                '[[reward]]\nuse = "shapes-faithfulness"\n',
}
RECIPE_TAIL = '\n[model]\nuse = "shapes"\n\n[prompts]\nuse = "shapes"\n'

TEST = '''"""{name}: grpo's contract for a {kind}, its registration{and_recipe}."""
{path_import}
from grpo.core.registry import load_registry
from grpo.testing import {check}{run_import}
from {package}.component import {cls}
{recipe_line}

def test_keeps_the_{kind}_contract():
    {check}({ctor})


def test_registered_through_the_entry_point():
    assert load_registry().get("{kind}", "{name}").distribution == "grpo-{name} 0.1.0"
'''

RECIPE_TEST = '''

def test_a_recipe_uses_it_by_name(tmp_path):
    records = run_tiny_recipe(RECIPE, tmp_path / "run")
    assert [r["iteration"] for r in records if r["kind"] == "train"] == [0]
'''

KINDS = sorted(COMPONENTS)


def _test_parts(kind: str, module: str) -> dict[str, str]:
    """The lines of the test module that only kinds with a recipe need."""
    if kind not in RECIPES:
        return {"and_recipe": "", "path_import": "", "run_import": "", "recipe_line": ""}
    return {
        "and_recipe": ", and a recipe that uses it",
        "path_import": "\nfrom pathlib import Path\n",
        "run_import": ", run_tiny_recipe",
        "recipe_line": f'\nRECIPE = Path(__file__).resolve().parents[1] / "recipes" / "{module}.toml"\n',
    }


def scaffold(kind: str, name: str, out: Path | None) -> Path:
    """Write the package `grpo-<name>/` for a component of `kind`; return its folder."""
    if kind not in COMPONENTS:
        raise UserError(f"cannot make a plugin of kind {kind!r}", where="KIND", hint=unknown_name_hint(kind, KINDS))
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise UserError(f"plugin name {name!r} is not valid", where="NAME",
                        hint="lower-case letters and digits, words joined by '-', e.g. my-reward")
    folder = out or Path(f"grpo-{name}")
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{str(folder)!r} already exists and is not empty", where="--out",
                        hint="choose another --out or remove that folder")
    module = name.replace("-", "_")
    package = f"grpo_{module}"
    cls = "".join(part.capitalize() for part in name.split("-"))
    fields = {"name": name, "kind": kind, "module": module, "package": package, "cls": cls}
    check, ctor = CHECKS[kind]
    files = {
        "pyproject.toml": PYPROJECT.format(**fields),
        f"src/{package}/__init__.py": f'"""grpo plugin {name}: a {kind}."""\n',
        f"src/{package}/plugin.py": PLUGIN.format(**fields),
        f"src/{package}/component.py": COMPONENTS[kind].format(**fields),
        f"tests/test_{module}.py": TEST.format(**fields, check=check, ctor=ctor.format(**fields), **_test_parts(kind, module))
        + (RECIPE_TEST if kind in RECIPES else ""),
        "README.md": f"# grpo-{name}\n\nA grpo {kind} plugin. Install it next to grpo and test it:\n\n"
        f"```bash\npip install -e .\npython -m pytest\ngrpo plugins show {name}\n```\n\n"
        "`docs/plugins.md` in grpo explains the hooks, the schema and the contracts.\n",
    }
    if kind in RECIPES:
        files[f"recipes/{module}.toml"] = f"# Uses the {kind} {name!r} by name.\n" + RECIPES[kind].format(**fields) + RECIPE_TAIL
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder
