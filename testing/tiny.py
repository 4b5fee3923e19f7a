"""Tiny, fast stand-ins for real inputs: a random shapes model, rendered images, a small rollout."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo.core.objective import Keep
from grpo.core.policy import Conditioning
from grpo.core.tree import Rollout, TreePlan

PROMPTS = ["two red circles on a gray background", "one blue square on a white background",
           "three green triangles on a black background"]


@functools.cache
def _cached_model() -> Path:
    return tiny_model(Path(tempfile.mkdtemp(prefix="grpo-tiny-model-")))


def tiny_model(path: str | Path | None = None, *, seed: int = 0) -> Path:
    """A randomly initialised shapes model with small channels, saved as a real model folder.

    Without `path` one folder per process is made and reused. Pass the folder to a recipe as
    ``[model] path``: it loads through the same code as the bundled weights.
    """
    if path is None:
        return _cached_model()
    from grpo.plugins.shapes.model import build_fresh, save_components

    path = Path(path)
    tokenizer, text_encoder, unet = build_fresh(seed, channels=(8, 16, 16), zero_output=False)
    save_components(path, tokenizer, text_encoder, unet)
    return path


def tiny_policy(path: str | Path | None = None):
    """A ``shapes`` policy (the real Policy implementation) on the tiny random model, on CPU, built as
    a run builds it (its optional members completed)."""
    from grpo.core.registry import complete
    from grpo.plugins.shapes.policy import ShapesPolicy

    return complete(ShapesPolicy(path=str(path or tiny_model()), device="cpu"), "model")


def tiny_images(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """`n` real rendered shapes images (N, 3, 32, 32) in [0, 1] and their captions."""
    from grpo.plugins.shapes.world import render_batch, split_scenes

    scenes, _ = split_scenes()
    rng = np.random.default_rng(seed)
    chosen = [scenes[i] for i in rng.choice(len(scenes), size=n, replace=n > len(scenes))]
    images = torch.from_numpy(render_batch(chosen, rng)).float()
    return images, [s.caption for s in chosen]


def tiny_rollout(
    plan: TreePlan | None = None,
    *,
    sampler: Any = None,
    prompts: list[str] | None = None,
    seed: int = 0,
    split_logprob: str = "nominal",
    policy: Any = None,
    keep: Keep | None = None,
    solver: Any = None,
    max_batch: int = 16,
) -> tuple[Rollout, Conditioning, Any]:
    """Roll out a forest on the tiny model: by default 2 prompts, a fan of 4 chains, 4 Dance-SDE steps.

    `keep` says what the rollout keeps (default: everything, split edges scored as `split_logprob`
    says); deterministic steps are taken by `solver` (default Euler), a plan's named ones by the
    registered solvers; `max_batch` nodes go through the model at once. Returns (rollout,
    conditioning, policy).
    """
    from grpo.core.registry import complete
    from grpo.core.rollout import rollout
    from grpo.plugins.samplers.flow import DanceSDE
    from grpo.plugins.solvers.solvers import DPMSolverPP, Euler
    from grpo.plugins.trees.topologies import Fan

    sampler = complete(sampler or DanceSDE(steps=4, eta=0.5), "sampler")
    plan = plan or Fan(group_size=4, noise_scale=1.0).plan(sampler.steps)
    policy = complete(policy or tiny_policy(), "model")
    keep = keep or Keep(log_prob=True, states=True, split_logprob=split_logprob)  # type: ignore[arg-type]
    solvers = {"": complete(solver or Euler(), "solver"), "euler": complete(Euler(), "solver"),
               "dpm-solver++": complete(DPMSolverPP(), "solver")}
    cond = policy.encode_prompts(prompts or PROMPTS[:2])
    gen = torch.Generator().manual_seed(seed)
    ro = rollout(policy, sampler, plan, cond, generator=gen, max_batch=max_batch, solvers=solvers, keep=keep)
    return ro, cond, policy


def strategy_parts(strategy: str, *, plugins: Any = (), **table: Any) -> dict[str, Any]:
    """The parts a recipe's ``[strategy]`` table runs, built: ``use = strategy`` and `table`'s keys
    (short keys such as ``split_points=[0, 2]``, or part tables such as ``topology={"use": "chains"}``).
    Returns them by slot (``pruner``: a list). `plugins` are registered beside the installed ones."""
    from grpo.core.compose import resolve_strategy
    from grpo.core.errors import UserErrors
    from grpo.core.registry import load_registry

    errors: list = []
    spec, _ = resolve_strategy(load_registry(plugins=plugins), {"use": strategy, **table}, errors)
    if errors or spec is None:
        raise UserErrors(errors)
    return {"topology": spec.topology.build(), "advantage": spec.advantage.build(),
            "pruner": [p.build() for p in spec.pruners], "objective": spec.objective.build(),
            "solver": spec.solver.build()}


# settings that make any recipe run in seconds on the tiny model
TINY_OVERRIDES = [
    "train.iterations=1",
    "train.prompts_per_iteration=2",
    "train.micro_batch=8",
    "train.rollout_batch=16",
    "train.checkpoint_every=1",
    "eval.every=1",
    "eval.grid_images=4",
]


def run_tiny_recipe(recipe: str | Path | dict[str, Any], out: str | Path, sets: list[str] = (), *, steps: int = 4,
                    plugins: list[Any] = ()) -> list[dict]:
    """Run a recipe end to end on the tiny model (one iteration, `steps` sampler steps) into `out`.

    `recipe` is a recipe file or an already-parsed recipe (a dict, e.g. from ``tomllib.loads``).
    `sets` are extra ``KEY=VALUE`` overrides (TOML values), applied last. The recipe's own
    ``[plugins] modules`` are loaded, installed plugins are discovered as in ``grpo run``, and
    `plugins` (modules, objects or single ``@hookimpl`` functions) are registered as well.
    A ``strategy.step_window`` that reaches beyond `steps` is cut to them. Returns the records of
    ``metrics.jsonl``.
    """
    from grpo.core.engine import Trainer
    from grpo.core.recipe import apply_overrides, load_toml, parse, plugin_modules
    from grpo.core.registry import load_registry
    from grpo.core.runlog import read_metrics

    data = recipe if isinstance(recipe, dict) else load_toml(recipe)
    overrides = [f"model.path='{tiny_model().as_posix()}'", f"sampler.steps={steps}", *TINY_OVERRIDES]
    prompts = data.get("prompts", {})
    if prompts.get("use") == "shapes":
        overrides += ["prompts.eval_train_samples=0", "prompts.eval_held_out_samples=1"]
    window = (data.get("strategy") or {}).get("step_window")
    if isinstance(window, list) and len(window) == 2 and window[1] > steps:  # the recipe's window, cut to the steps
        overrides.append(f"strategy.step_window=[{min(window[0], steps - 1)}, {steps}]")
    data = apply_overrides(data, [*overrides, *sets])
    registry = load_registry(plugin_modules(data), plugins=plugins)
    source = None if isinstance(recipe, dict) else Path(recipe)
    Trainer(parse(data, registry, source=source), Path(out)).run()
    return read_metrics(Path(out))
