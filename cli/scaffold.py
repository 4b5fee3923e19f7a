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
dependencies = ["grpo>=0.2,<0.3"]  # the plugin API may change in minor versions before 1.0 (CHANGELOG.md)

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
    "strategy": '''"""A strategy: a preset of registered parts (topology, advantage, pruners, objective, solver) with
the sampler and [train] settings of its paper. Every option stays its part's; a recipe changes any of them."""

from grpo.core.strategy import Part, Preset

{cls} = Preset(
    description="G chains per prompt from shared noise, group advantages, half of each chain's steps trained "
                "with the clipped ratio.",
    # every part by kind and registered name: built-in or from any installed plugin
    topology=Part("fan", group_size=8, noise_scale=1.0),
    advantage=Part("group"),
    pruners=(Part("timestep-fraction", timestep_fraction=0.5),),
    objective=Part("clipped-ratio", clip_range=1e-3),
    sampler=Part("dance-sde", steps=16, eta=0.5),
)
''',
    "objective": '''"""An objective: the learning rule, from a rollout's leaves and their advantages to a loss."""

from dataclasses import dataclass
from typing import Annotated

import torch

from grpo.core.objective import Keep, LossContext, Metric, UnitContext, UnitLoss, Units
from grpo.core.schema import Doc, Range
from grpo.core.tree import Advantages, EdgeSet, Rollout


@dataclass(kw_only=True)
class NoisedLeaves(Units):
    """(leaf, noise level, noise draw) triples: the leaf's index, σ (U,) and the noise (U, *latent)."""

    leaf: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    weight: torch.Tensor


class {cls}:
    """Reward-weighted flow matching on the forward process: each leaf's clean sample x0 is noised
    again, x = (1 − σ)·x0 + σ·ε at `draws` uniform noise levels, and the velocity is regressed onto
    ε − x0 with weight max(A, 0), A the leaf's advantage: the policy moves toward its better samples.
    It needs no per-step density, so any sampler works, a deterministic one included."""

    unit = "samples"
    keep = Keep()  # the leaves only: no states, no log-probabilities
    metrics = {{"loss": Metric("loss"), "mse": Metric("mse"), "weight": Metric("weight")}}

    def __init__(self, *, draws: Annotated[int, Range(ge=1), Doc("noise levels per leaf")] = 2) -> None:
        self.draws = draws

    def units(self, rollout: Rollout, advantages: Advantages, edges: EdgeSet, ctx: UnitContext) -> NoisedLeaves:
        leaves, per_tree, k = rollout.final.shape[0], rollout.plan.leaves, self.draws
        leaf = torch.arange(leaves).repeat_interleave(k)
        tree = rollout.tree[-1][leaf]
        shape = tuple(rollout.final.shape[1:])
        sigma = torch.cat([torch.rand(per_tree * k, generator=g) for g in ctx.generators])
        noise = torch.cat([torch.randn((per_tree * k, *shape), generator=g) for g in ctx.generators])
        weight = advantages.values[-1][leaf].float().clamp_min(0.0)
        within = torch.arange(leaf.numel()) - tree * per_tree * k  # each unit's place within its tree
        return NoisedLeaves(tree=tree, major=torch.zeros_like(leaf), minor=within, chain=leaf,
                            leaf=leaf, sigma=sigma.clamp(1e-3, 1.0 - 1e-3), noise=noise, weight=weight)

    def loss(self, units: NoisedLeaves, ctx: LossContext) -> UnitLoss:
        x0 = ctx.rollout.final[units.leaf.to(ctx.rollout.final.device)].float()
        device = x0.device
        sigma, noise = units.sigma.to(device), units.noise.to(device)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        v = ctx.policy.velocity((1.0 - s) * x0 + s * noise, sigma, ctx.cond.select(units.tree)).float()
        mse = ((v - (noise - x0)) ** 2).flatten(1).mean(dim=1)
        weight = units.weight.to(device)
        return UnitLoss(weight * mse, torch.isfinite(weight), {{"mse": mse.detach(), "weight": weight}})
''',
    "solver": '''"""A deterministic solver: one ODE step of the flow from σ to σ'."""

import torch

from grpo.core.solver import Previous


class {cls}:
    """Variable-step Adams–Bashforth 2 on the velocity: x' = x + Δ·(v + Δ/(2Δ₋)·(v − v₋)), with Δ = σ' − σ
    and Δ₋ = σ − σ₋ the previous step; Euler at the first step. Exact on straight flows."""

    uses_previous = True  # it is handed the node's previous step

    def __init__(self) -> None:
        pass

    def step(self, x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             sigma_next: torch.Tensor, previous: Previous | None) -> torch.Tensor:
        view = (-1, *([1] * (x.dim() - 1)))
        delta = (sigma_next - sigma).view(view)
        if previous is None:
            return (x + delta * v).float()
        before = (sigma - previous.sigma).view(view)
        return (x + delta * (v + delta / (2.0 * before) * (v - previous.v))).float()
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
        self.times = None  # the unshifted times of the grid; a model's pipeline grid replaces them

    def sigmas(self) -> torch.Tensor:
        return sigma_grid(self.steps, self.shift, self.times)

    def step(self, x, v, sigma, sigma_next):
        mean = euler_step(x, v, sigma, sigma_next)
        return mean, self.noise * torch.sqrt((sigma - sigma_next).clamp_min(0))
''',
}

CHECKS = {
    "objective": ("check_objective", "{cls}()"),
    "solver": ("check_solver", "{cls}()"),
    "reward": ("check_reward", "{cls}()"),
    "pruner": ("check_pruner", "{cls}()"),
    "advantage": ("check_advantage", "{cls}()"),
    "strategy": ("check_strategy", "{cls}, steps=4"),
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
    # an objective on the leaves alone: independent chains, every step deterministic
    "objective": '[strategy]\nuse = "dancegrpo"\n\n[strategy.topology]\nuse = "chains"\ngroup_size = 3\n\n'
                 '[strategy.objective]\nuse = "{name}"\n\n[sampler]\nuse = "ode"\n\n'
                 '[[reward]]\nuse = "shapes-faithfulness"\n',
    # the deterministic steps of BranchGRPO-Mix and of evaluation
    "solver": '[strategy]\nuse = "branchgrpo-mix"\nsplit_points = [0, 1]\nwindow_size = 1\n\n'
              '[strategy.solver]\nuse = "{name}"\n\n[[reward]]\nuse = "shapes-faithfulness"\n\n'
              '[eval]\nsolver = "{name}"\n',
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
