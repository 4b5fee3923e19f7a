from pathlib import Path

import pytest

from grpo.cli.common import load_recipe
from grpo.core.config import TrainConfig
from grpo.core.errors import UserError, UserErrors
from grpo.core.recipe import apply_overrides, expand_env
from grpo.core.schema import validate

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    from grpo.core.components import build_parts

    recipe, _ = load_recipe(path, env=False)
    assert recipe.rewards and recipe.train.iterations >= 1
    build_parts(recipe)  # its parts fit together, as `grpo validate` checks


def test_overrides_parse_toml_values():
    data = {"train": {"lr": 1.0}, "reward": [{"use": "a"}]}
    out = apply_overrides(data, ["train.lr=2e-5", "train.betas=[0.9, 0.99]", "reward.0.weight=2", "model.use=shapes"])
    assert out["train"]["lr"] == 2e-5 and out["train"]["betas"] == [0.9, 0.99]
    assert out["reward"][0]["weight"] == 2 and out["model"]["use"] == "shapes"
    assert data["train"]["lr"] == 1.0  # the input is not modified
    with pytest.raises(UserError, match="index"):
        apply_overrides(data, ["reward.3.weight=1"])


def test_env_expansion():
    data = {"model": {"path": "${ROOT}/w", "n": 3}, "reward": [{"p": "${ROOT}"}]}
    out = expand_env(data, environ={"ROOT": "/x"})
    assert out == {"model": {"path": "/x/w", "n": 3}, "reward": [{"p": "/x"}]}
    with pytest.raises(UserError) as e:
        expand_env(data, environ={})
    assert e.value.where == "model.path" and "ROOT" in e.value.message


def test_train_config_defaults_and_errors():
    kwargs = validate(TrainConfig, {"lr": 3e-5}, "train")
    cfg = TrainConfig(**kwargs)
    assert cfg.lr == 3e-5 and cfg.iterations == 100 and cfg.betas == [0.9, 0.999]
    with pytest.raises(UserErrors) as e:
        validate(TrainConfig, {"lr": "fast", "epochs": 0, "itterations": 3}, "train")
    where = sorted(err.where for err in e.value.errors)
    assert where == ["train.epochs", "train.itterations", "train.lr"]


def test_resolved_recipe_has_every_default():
    recipe, _ = load_recipe(RECIPES[0], env=False)
    data = recipe.to_dict()
    assert data["train"]["weight_decay"] == 1e-4
    assert "eta" in data["sampler"] or "noise_level" in data["sampler"]
    assert data["strategy"]["use"] == recipe.strategy.entry.name


def test_recipe_reference_is_up_to_date():
    from grpo.cli.reference import render

    doc = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
    assert doc.read_text() == render(), "regenerate: python -m grpo.cli.reference > docs/recipes.md"


def _two_rewards(tmp_path, second: str) -> Path:
    text = (RECIPES[0].parent / "shapes_dance.toml").read_text()
    text = text.replace('[prompts]', f'[[reward]]\nuse = "shapes-faithfulness"\ntarget = "exact"\n{second}\n\n[prompts]', 1)
    path = tmp_path / "two.toml"
    path.write_text(text)
    return path


def test_two_rewards_of_one_plugin_need_their_own_names(tmp_path):
    with pytest.raises(UserErrors) as e:
        load_recipe(_two_rewards(tmp_path, ""), env=False)
    (err,) = e.value.errors
    assert err.where == "reward.1.name" and "shapes-faithfulness-1" in err.hint
    with pytest.raises(UserErrors) as e:
        load_recipe(_two_rewards(tmp_path, 'name = "a b"'), env=False)
    assert e.value.errors[0].where == "reward.1.name"


def test_reward_names_label_the_logs_and_survive_resolution(tmp_path):
    from grpo.core.recipe import parse
    from grpo.core.registry import load_registry
    from grpo.testing import run_tiny_recipe

    recipe, _ = load_recipe(_two_rewards(tmp_path, 'name = "exact-match"'), env=False)
    assert [r.label for r in recipe.rewards] == ["shapes-faithfulness", "exact-match"]
    again = parse(recipe.to_dict(), load_registry([]))
    assert [r.label for r in again.rewards] == ["shapes-faithfulness", "exact-match"]
    records = run_tiny_recipe(_two_rewards(tmp_path, 'name = "exact-match"'), tmp_path / "run")
    train = next(r for r in records if r.get("kind") == "train")
    # the exact-match reward is the binary component of the faithfulness one, image by image
    assert train["reward/exact-match/mean"] == pytest.approx(train["reward/shapes-faithfulness/exact/mean"])
    assert train["reward/shapes-faithfulness/mean"] == pytest.approx(train["reward/shapes-faithfulness/score/mean"])


def test_a_run_directory_of_version_0_1_reads_in_the_new_layout():
    """The committed runs of benchmarks/branch_vs_dance were written by 0.1 ([train] kl_beta, the
    strategy's own options, [parts]): read again, each is exactly today's recipe (BranchGRPO's with
    the preset's neutral width pruner, which 0.1 did not make and which trains the same edges), so
    `grpo compare` keeps them; a run whose settings differ is still refused."""
    from grpo.cli.compare import _check_same_settings
    from grpo.core.recipe import load_toml, upgrade_resolved

    runs = RECIPES[0].parents[1] / "benchmarks" / "branch_vs_dance" / "runs"
    old = load_toml(runs / "shapes_dance-seed1" / "recipe.resolved.toml")
    assert "kl_beta" in old["train"] and "objective" not in old["strategy"]  # the 0.1 layout
    dance, _ = load_recipe(runs / "shapes_dance-seed1" / "recipe.resolved.toml", env=False, resolved=True)
    today, _ = load_recipe(RECIPES[0].parent / "shapes_dance.toml", ["train.seed=1"], env=False)
    assert dance.to_dict() == today.to_dict()
    _check_same_settings(runs / "shapes_dance-seed1", today.to_dict())  # kept by grpo compare
    branch, _ = load_recipe(runs / "shapes_branch-seed0" / "recipe.resolved.toml", env=False, resolved=True)
    assert [p.entry.name for p in branch.strategy.pruners] == ["depth", "width"]
    assert branch.strategy.pruners[1].options["width_ratio"] == 1.0  # 0.1's "0 = off": every chain kept
    assert branch.strategy.objective.options == {"clip_range": 1e-3, "kl_beta": 0.5, "kl_form": "gaussian",
                                                 "grpo_guard": False, "guard_bias": "micro-batch", "split_logprob": "nominal",
                                                 "trust_region": "clip", "dppo_threshold": 1e-5, "dppo_scaled": True}
    now, _ = load_recipe(RECIPES[0].parent / "shapes_branch.toml", env=False)
    assert branch.to_dict() == now.to_dict()
    _check_same_settings(runs / "shapes_branch-seed0", now.to_dict())
    other, _ = load_recipe(RECIPES[0].parent / "shapes_branch.toml", ["strategy.width_ratio=0.5"], env=False)
    with pytest.raises(UserError, match=r"other settings \(\[strategy\] differ\)"):
        _check_same_settings(runs / "shapes_branch-seed0", other.to_dict())
    assert upgrade_resolved(today.to_dict()) == today.to_dict()  # today's layout passes unchanged
    with pytest.raises(UserErrors, match="train.kl_beta"):  # a user's recipe with 0.1 keys is told where they went
        load_recipe(runs / "shapes_dance-seed1" / "recipe.resolved.toml", env=False)
