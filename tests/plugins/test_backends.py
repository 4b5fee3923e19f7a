"""Where the backends train: the DeepSpeed accelerator and the process-group backend follow the
device, whatever the environment or an earlier ``import deepspeed`` chose."""

from __future__ import annotations

import os

import pytest
import torch

from grpo.core.errors import UserError
from grpo.plugins.backends import deepspeed_backend as dsb
from grpo.plugins.backends.plain import TorchBackend, resolve_device


def test_the_accelerator_follows_the_device():
    assert dsb.accelerator_for(torch.device("cuda", 1), None) == "cuda"
    assert dsb.accelerator_for(torch.device("cpu"), None) == "cpu"
    assert dsb.accelerator_for(torch.device("cuda", 0), "cuda") == "cuda"
    assert dsb.process_group_for(torch.device("cuda", 0)) == "nccl"
    assert dsb.process_group_for(torch.device("cpu")) == "gloo"


def test_a_contradicting_ds_accelerator_is_a_user_error():
    with pytest.raises(UserError) as e:
        dsb.accelerator_for(torch.device("cuda", 0), "cpu")
    assert e.value.where == "backend.device" and "unset DS_ACCELERATOR" in e.value.hint


def test_auto_trains_on_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    backend = dsb.DeepSpeedBackend(precision="bf16")
    assert backend.device == torch.device("cuda", 1)  # each rank on its own GPU
    assert dsb.accelerator_for(backend.device, None) == "cuda"
    assert TorchBackend().device.type == "cuda"


def test_deepspeed_is_switched_to_the_devices_accelerator():
    """An accelerator detected earlier (here: the CPU one) is replaced by the one the device needs."""
    from deepspeed.accelerator import get_accelerator, set_accelerator
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    before = get_accelerator()
    try:
        set_accelerator(CPU_Accelerator())
        dsb._match_accelerator(torch.device("cuda", 0))
        assert get_accelerator().device_name() == "cuda"
        dsb._match_accelerator(torch.device("cpu"))
        assert get_accelerator().device_name() == "cpu"
    finally:
        set_accelerator(before)


def test_the_command_line_leaves_ds_accelerator_alone(monkeypatch):
    """The CLI used to set DS_ACCELERATOR=cpu before any backend was built, so GPU runs with DeepSpeed
    got its CPU accelerator; now the backend chooses it from its device."""
    from grpo.cli import main as cli

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr("sys.argv", ["grpo", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert "DS_ACCELERATOR" not in os.environ
