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


def test_each_rank_builds_its_components_on_its_own_gpu(monkeypatch):
    """A policy, encoder or reward placed on "cuda" must land on the rank's GPU: the current device is
    set from LOCAL_RANK before anything is built (before, every rank's encoders went to GPU 0)."""
    from grpo.core import dist

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dist.bind_local_gpu() == 3 and chosen == [3]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.bind_local_gpu() is None and chosen == [3]


def test_the_engine_binds_the_gpu_before_building(monkeypatch, tmp_path):
    """The order matters: the binding happens in setup before the first component is built."""
    import grpo.core.engine as engine

    order = []
    monkeypatch.setattr(engine, "bind_local_gpu", lambda: order.append("bind"))

    def build(recipe):
        order.append("build")
        raise RuntimeError("stop here")

    monkeypatch.setattr(engine, "build", build)
    from grpo.core.recipe import load_toml, parse
    from grpo.core.registry import load_registry

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    trainer = engine.Trainer(parse(load_toml(root / "recipes" / "shapes_dance.toml"), load_registry()), tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.setup()
    assert order == ["bind", "build"]


def test_the_torch_backend_reports_its_memory():
    """Parameters, gradients at the step and AdamW's two moments per trained weight, in bytes."""
    from grpo.core.backend import OptimizerConfig

    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    trained = list(module[1].parameters())
    backend = TorchBackend(device="cpu")
    backend.setup(module, trained, OptimizerConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                                                   grad_clip=1.0))
    module(torch.randn(3, 8)).square().sum().backward()
    backend.step()
    memory = backend.memory()
    assert memory["parameters"] == (8 * 4 + 4 + 4 * 2 + 2) * 4
    assert memory["gradients"] == (4 * 2 + 2) * 4 and memory["optimizer_state"] == 2 * (4 * 2 + 2) * 4


def test_an_fp16_runs_dynamic_loss_scaler_is_read_as_data(tmp_path):
    """fp16 needs a GPU, so its checkpoints cannot be written here; its ZeRO optimizer state holds a
    DynamicLossScaler (with a torch dtype), which the backend's data-only reading must accept."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from grpo.core.integrity import data_only_loads, refuse_code
    from grpo.plugins.backends.deepspeed_backend import checkpoint_types

    scaler = DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1.0, delayed_shift=2,
                               consecutive_hysteresis=False, dtype=torch.float16)
    scaler.cur_iter = 7
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler, "zero_stage": ZeroStageEnum.gradients}}, path)
    refuse_code([path], checkpoint_types())
    with data_only_loads(checkpoint_types()):
        back = torch.load(path, weights_only=False)["optimizer_state_dict"]
    assert back["loss_scaler"].cur_iter == 7 and back["loss_scaler"].dtype == torch.float16
    assert back["loss_scaler"].cur_scale == 2.0**16 and back["zero_stage"] is ZeroStageEnum.gradients
