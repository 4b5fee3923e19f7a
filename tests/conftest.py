"""Shared fixtures: one thread per process, tiny random shapes models saved to disk."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised shapes model with small channels, saved like a real model folder."""
    from grpo.plugins.shapes.model import build_fresh, save_components

    path = tmp_path_factory.mktemp("tiny-shapes")
    tokenizer, text_encoder, unet = build_fresh(0, channels=(8, 16, 16), zero_output=False)
    save_components(path, tokenizer, text_encoder, unet)
    return path


@pytest.fixture
def tiny_policy(tiny_model_dir):
    """The shapes policy on the tiny model, built as a run builds it (its optional members completed)."""
    from grpo.core.registry import complete
    from grpo.plugins.shapes.policy import ShapesPolicy

    return complete(ShapesPolicy(path=str(tiny_model_dir), device="cpu"), "model")
