"""Every registered built-in keeps the contract of its kind: this walks the registry and runs
grpo.testing's check on each component, built through its registry entry from its defaults, or from
the options below where it reads weights (tiny random ones, in their released layouts) or a tree
needs them. A built-in registered without a way to build it here fails, so none goes unchecked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_rewards import (
    HEADS,
    PIXELS,
    serve,
    video,
    write_aesthetic_head,
    write_clip,
    write_hps,
    write_hpsv3,
    write_imagereward,
    write_videoalign,
)

import grpo.testing as gt
from grpo.core.registry import instantiate, load_registry
from grpo.core.schema import validate
from grpo.testing.tiny_diffusers import tiny_flux, tiny_sd3, tiny_wan

BUILTIN = "grpo (built-in)"
REGISTRY = load_registry(autoload=False)
ENTRIES = [(e.kind, e.name) for e in REGISTRY.all() if e.distribution == BUILTIN]
MODEL = {"precision": "fp32", "device": "cpu", "max_sequence_length": 16, "height": 32, "width": 32}

# (kind, name) -> (the resources it needs, its options from them); absent: every option at its default
OPTIONS = {
    ("model", "shapes"): (["shapes_model"], lambda r: {"path": str(r["shapes_model"]), "device": "cpu"}),
    ("model", "flux"): (["flux"], lambda r: {"path": str(r["flux"]), **MODEL}),
    ("model", "sd3"): (["sd3"], lambda r: {"path": str(r["sd3"]), **MODEL}),
    ("model", "wan-t2v"): (["wan"], lambda r: {"path": str(r["wan"]), **MODEL, "frames": 5}),
    ("reward", "hpsv2"): (["hps"], lambda r: {"path": str(r["hps"] / "hps.pt"), "tokenizer": str(r["hps"] / "tokenizer"),
                                              "vision_heads": HEADS, "text_heads": HEADS, "device": "cpu"}),
    ("reward", "pickscore"): (["clip"], lambda r: {"path": str(r["clip"]), "device": "cpu"}),
    ("reward", "clip-score"): (["clip"], lambda r: {"path": str(r["clip"]), "device": "cpu"}),
    ("reward", "aesthetic"): (["clip", "aesthetic_head"], lambda r: {"path": str(r["clip"]), "head": str(r["aesthetic_head"]),
                                                                     "device": "cpu"}),
    ("reward", "imagereward"): (["imagereward"], lambda r: {"path": str(r["imagereward"] / "ImageReward.pt"),
                                                            "tokenizer": str(r["imagereward"] / "tok"), "vision_heads": 2,
                                                            "text_heads": 2, "device": "cpu"}),
    ("reward", "videoalign"): (["videoalign"], lambda r: {
        "path": str(r["videoalign"] / "model.pth"), "base": str(r["videoalign"] / "base"),
        "template_file": str(r["videoalign"] / "template.txt"), "lora_rank": 4, "lora_alpha": 8.0, "fps": 16.0,
        "precision": "fp32", "device": "cpu"}),
    ("reward", "hpsv3"): (["hpsv3"], lambda r: {"path": str(r["hpsv3"] / "HPSv3.safetensors"),
                                                "base": str(r["hpsv3"] / "base"),
                                                "template_file": str(r["hpsv3"] / "template.txt"), "pixels": PIXELS,
                                                "precision": "fp32", "device": "cpu"}),
    ("reward", "http"): (["judge"], lambda r: {"url": r["judge"], "image_size": 0}),
    ("backend", "torch"): ([], lambda r: {"device": "cpu"}),
    ("prompts", "file"): (["prompt_file"], lambda r: {"path": str(r["prompt_file"])}),
    ("topology", "branching"): ([], lambda r: {"split_points": [0, 2]}),
    **{("sampler", name): ([], lambda r: {"steps": 4}) for name in ("dance-sde", "flow-sde", "cps", "ode")},
}


@pytest.fixture(scope="module")
def resources(tmp_path_factory, tiny_model_dir):
    """Each resource a built-in reads, made on first use."""
    made: dict = {}
    judge = serve()

    def make(name):
        root = tmp_path_factory.mktemp(name)
        if name == "judge":
            return judge.__enter__()
        return {"shapes_model": lambda: tiny_model_dir, "flux": lambda: tiny_flux(root), "sd3": lambda: tiny_sd3(root),
                "wan": lambda: tiny_wan(root), "hps": lambda: write_hps(root)[0], "clip": lambda: write_clip(root),
                "aesthetic_head": lambda: write_aesthetic_head(root / "head.pth"),
                "imagereward": lambda: write_imagereward(root)[0], "videoalign": lambda: write_videoalign(root)[0],
                "hpsv3": lambda: write_hpsv3(root)[0], "prompt_file": lambda: _prompt_file(root)}[name]()

    def get(names):
        for name in names:
            if name not in made:
                made[name] = make(name)
        return {name: made[name] for name in names}

    yield get
    if "judge" in made:
        judge.__exit__(None, None, None)


def _prompt_file(root: Path) -> Path:
    (root / "prompts.txt").write_text("a red circle\ntwo blue squares\n")
    return root / "prompts.txt"


@pytest.fixture(scope="module")
def tree(tiny_model_dir):
    """A small branching forest (advantages and pruners are checked on a tree, not only on chains)."""
    plan = gt.strategy_parts("branchgrpo", split_points=[0, 2])["topology"].plan(4)
    return gt.tiny_rollout(plan, policy=gt.tiny_policy(tiny_model_dir))[0]


def build(kind: str, name: str, resources) -> object:
    entry = REGISTRY.get(kind, name)
    needs, options = OPTIONS.get((kind, name), ([], lambda r: {}))
    return instantiate(entry, validate(entry.factory, options(resources(needs)), f"{kind}.{name}"), kind)


def check(kind: str, name: str, resources, tree, tmp_path) -> None:
    """grpo.testing's check of `kind` on the built-in `name`."""
    if kind == "strategy":
        gt.check_strategy(REGISTRY.get(kind, name).factory, steps=12)  # room for every preset's splits and windows
    elif kind == "backend":
        gt.check_backend(lambda: build(kind, name, resources), tmp_path)
    elif kind == "reward" and name == "videoalign":
        gt.check_reward(build(kind, name, resources), torch.stack([video(i) for i in range(3)]), ["a dog", "two cats", "rain"],
                        atol=1e-4)
    else:
        component = build(kind, name, resources)
        {"model": gt.check_policy, "sampler": gt.check_sampler, "solver": gt.check_solver,
         "topology": gt.check_topology, "reward": lambda c: gt.check_reward(c, atol=1e-4),
         "advantage": lambda c: gt.check_advantage(c, tree), "pruner": lambda c: gt.check_pruner(c, tree),
         "objective": gt.check_objective, "prompts": gt.check_prompts}[kind](component)


@pytest.mark.parametrize("kind,name", ENTRIES, ids=[f"{k}-{n}" for k, n in ENTRIES])
def test_every_builtin_keeps_its_contract(kind, name, resources, tree, tmp_path):
    check(kind, name, resources, tree, tmp_path)


def test_the_walk_covers_every_kind():
    from grpo.core.hookspecs import KINDS

    assert {k for k, _ in ENTRIES} == set(KINDS)
    assert len(ENTRIES) >= 40
    assert set(OPTIONS) <= set(ENTRIES), "options for a component that is not registered"
