"""The shapes recipe family: every ``recipes/shapes_*.toml`` agrees with ``shapes_dance.toml`` on
everything but the algorithm, so that `grpo compare` of any subset of them compares algorithms only.

What may differ: the ``[strategy]`` table (every part it runs, the objective's clip range and KL term
among them), how the objective's units are grouped into optimizer steps (``train.accumulation_unit``),
and the SDE's own noise options of the sampler (its ``use``, ``eta``, ``noise_level``, ``first_step``,
and any option only one of the two samplers has, such as the ``noise_block`` a deterministic sampler
lacks: each method's exploration). ``train.micro_batch`` counts the objective's units, so what must agree
is the leaves per forward: a unit of a whole group (DGPO's) holds ``group_size`` of them. A recipe that trains adapters (``model.lora_rank``) may
also set its own adapter size and learning rate. Everything else (model, steps, shift, ``noise_block``, rewards,
prompts, evaluation set and schedule, iterations, batch, optimizer) is the family's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo.cli.common import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
FAMILY = sorted(p for p in RECIPES.glob("shapes_*.toml") if p.stem != "shapes_dance")
ALGORITHM = ("strategy", "parts", "provenance", "sampler.use", "sampler.eta", "sampler.noise_level",
             "sampler.first_step", "train.accumulation_unit")
ADAPTERS = ("model.lora_rank", "model.lora_alpha", "train.lr")


def _flat(data: object, path: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{path}.{key}" if path else key).items()}
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        return {k: v for i, x in enumerate(data) for k, v in _flat(x, f"{path}.{i}").items()}
    return {path: data}


def family_differences(a: dict, b: dict) -> list[str]:
    """Dotted keys in which two resolved recipes differ beyond what the family lets differ."""
    fa, fb = _flat(a), _flat(b)
    allowed = ALGORITHM + (ADAPTERS if fa.get("model.lora_rank") != fb.get("model.lora_rank") else ())
    own = {k for k in set(fa) ^ set(fb) if k.startswith("sampler.")}  # an option of one sampler only
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and not k.startswith(allowed) and k not in own)


def resolved(path: Path) -> dict:
    """The resolved recipe, its micro-batch in leaves per forward."""
    from grpo.core.components import build_parts

    recipe = load_recipe(path, env=False)[0]
    data = recipe.to_dict()
    if build_parts(recipe).objective.unit == "noised_groups":
        data["train"]["micro_batch"] *= recipe.strategy.topology.options["group_size"]
    return data


@pytest.fixture(scope="module")
def reference():
    return resolved(RECIPES / "shapes_dance.toml")


@pytest.mark.parametrize("path", FAMILY, ids=lambda p: p.stem)
def test_shapes_recipes_differ_only_in_the_algorithm(path, reference):
    assert family_differences(reference, resolved(path)) == []


def test_the_family_check_catches_a_difference(reference):
    """The check itself: a changed setting outside the algorithm is found, an allowed one is not."""
    other = load_recipe(RECIPES / "shapes_branch.toml", ["sampler.noise_block=1", "eval.every_minutes=5",
                                                          "strategy.clip_range=0.1"], env=False)[0].to_dict()
    assert family_differences(reference, other) == ["eval.every_minutes", "sampler.noise_block"]
    lr = load_recipe(RECIPES / "shapes_branch.toml", ["train.lr=1e-4"], env=False)[0].to_dict()
    assert family_differences(reference, lr) == ["train.lr"]  # only an adapter recipe sets its own rate
    lora = load_recipe(RECIPES / "shapes_dance_lora.toml", ["train.prompts_per_iteration=4"], env=False)[0].to_dict()
    assert family_differences(reference, lora) == ["train.prompts_per_iteration"]
    # a deterministic sampler lacks the SDE's noise tiles; the steps they share are the family's
    nft = load_recipe(RECIPES / "shapes_nft.toml", ["sampler.steps=10"], env=False)[0].to_dict()
    assert family_differences(reference, nft) == ["sampler.steps"]
