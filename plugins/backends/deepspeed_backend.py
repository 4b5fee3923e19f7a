"""DeepSpeed ZeRO backend: stages 0-3, CPU offload, one process or many.

On a CPU it uses DeepSpeed's CPU accelerator with the gloo backend and a client AdamW, so that
no C++ op is compiled (offload keeps the client optimizer too). The process group comes from the
launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); without one
it is a group of one. Gradient accumulation boundaries are set by the engine's update loop.
"""

from __future__ import annotations

import atexit
import datetime
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from grpo.core.backend import OptimizerConfig
from grpo.core.dist import free_port
from grpo.core.errors import UserError
from grpo.core.integrity import data_only_loads, load_data, refuse_code
from grpo.core.schema import Doc, Range

from .plain import resolve_device

Preset = Literal["none", "zero2", "zero3", "zero3-offload"]

PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "zero3-offload": {"zero_stage": 3, "offload_optimizer": True, "offload_param": True},
}

# Keys of a user's DeepSpeed JSON that the engine owns: the batch is set per optimizer step by the
# update loop and the optimizer is the engine's AdamW.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
              "scheduler")


def _destroy_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def accelerator_for(device: torch.device, requested: str | None) -> str:
    """DeepSpeed's accelerator for training on `device`: ``cuda`` on a GPU, ``cpu`` otherwise. A
    ``DS_ACCELERATOR`` the user set (`requested`) must agree with the device."""
    chosen = "cuda" if device.type == "cuda" else "cpu"
    if requested and requested != chosen:
        raise UserError(f"DS_ACCELERATOR={requested} but the backend trains on {device.type}", where="backend.device",
                        hint=f"unset DS_ACCELERATOR (grpo chooses '{chosen}' itself), or set backend.device to match it")
    return chosen


def process_group_for(device: torch.device) -> str:
    """The torch.distributed backend for `device`: NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def _match_accelerator(device: torch.device) -> None:
    """Make DeepSpeed's accelerator the one `device` needs, also when an earlier ``import deepspeed``
    (by another package) already detected one from the machine."""
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() == device.type:
        return
    if device.type == "cuda":
        from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
    else:
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
    set_accelerator(Accelerator())


class DeepSpeedBackend:
    """DeepSpeed ZeRO 0-3 with optional CPU offload, fp32 / bf16 / fp16 weights, gloo on CPU, NCCL on GPU."""

    requires = ("deepspeed",)

    def __init__(
        self,
        *,
        preset: Annotated[Preset, Doc("named settings: zero2, zero3, zero3-offload (explicit keys win)")] = "none",
        zero_stage: Annotated[int | None, Range(ge=0, le=3), Doc("ZeRO stage; default the preset's, else 2")] = None,
        offload_optimizer: Annotated[bool | None, Doc("keep optimizer state in CPU memory (stages 1-3)")] = None,
        offload_param: Annotated[bool | None, Doc("keep parameters in CPU memory (stage 3)")] = None,
        precision: Annotated[Literal["fp32", "bf16", "fp16"], Doc("weight precision; log-probabilities are fp32")] = "fp32",
        gradient_checkpointing: Annotated[bool, Doc("recompute activations in the backward pass")] = False,
        config_file: Annotated[str, Doc("a DeepSpeed JSON merged over the generated config")] = "",
        timeout: Annotated[float, Range(gt=0), Doc("minutes a collective waits for the other ranks")] = 10.0,
        device: Literal["auto", "cpu", "cuda"] = "auto",
    ) -> None:
        chosen = PRESETS[preset]
        self.preset = preset
        self.zero_stage = zero_stage if zero_stage is not None else chosen.get("zero_stage", 2)
        self.offload_optimizer = bool(offload_optimizer if offload_optimizer is not None
                                      else chosen.get("offload_optimizer", False))
        self.offload_param = bool(offload_param if offload_param is not None else chosen.get("offload_param", False))
        if self.offload_param and self.zero_stage != 3:
            raise UserError(f"parameter offload needs ZeRO stage 3, not {self.zero_stage}", where="backend.offload_param",
                            hint="set backend.zero_stage = 3, or backend.offload_param = false")
        if self.offload_optimizer and self.zero_stage == 0:
            raise UserError("optimizer offload needs ZeRO stage 1-3", where="backend.offload_optimizer",
                            hint="set backend.zero_stage = 2 or 3, or backend.offload_optimizer = false")
        self.precision, self.gradient_checkpointing, self.timeout = precision, gradient_checkpointing, timeout
        self.config_file = config_file  # read when the run starts (its path may hold ${VARS})
        self.device = resolve_device(device)
        if self.device.type == "cpu" and precision == "fp16":
            raise UserError("fp16 is not supported on a CPU", where="backend.precision", hint="use 'bf16' or 'fp32'")
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
        self.engine = None
        self._last_gradient_bytes = 0

    @staticmethod
    def _read_config(path: str) -> dict[str, Any]:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"no such file: {path!r}", where="backend.config_file",
                            hint="give the path of a DeepSpeed JSON config, or leave config_file empty")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})", where="backend.config_file") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a JSON object", where="backend.config_file")
        owned = [k for k in OWNED_KEYS if k in data]
        if owned:
            raise UserError(f"{path}: {', '.join(owned)} are set by grpo", where="backend.config_file",
                            hint="remove them: batch sizes come from [train] (micro_batch, optimizer_steps) and the "
                                 "optimizer is AdamW with the [train] settings")
        return data

    # -- process group ---------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        os.environ["DS_ACCELERATOR"] = accelerator_for(self.device, os.environ.get("DS_ACCELERATOR"))
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        import deepspeed

        _match_accelerator(self.device)
        comm_torch = sys.modules.get("deepspeed.comm.torch")
        if comm_torch is not None and self.device.type == "cpu":
            # The shared-memory collective op would be JIT-compiled (minutes); gloo needs none.
            comm_torch.build_shm_op = lambda: None
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(process_group_for(self.device), auto_mpi_discovery=False,
                                       timeout=datetime.timedelta(minutes=self.timeout), verbose=False)
            # DeepSpeed keeps its own handles on this group, so a later backend in the same process reuses it;
            # it is destroyed when the process exits, before the interpreter tears down: a gloo group left
            # to the interpreter's teardown can abort the process ("terminate called without an active
            # exception") while its worker threads still hold tensors.
            atexit.register(_destroy_group)

    def config(self, optim: OptimizerConfig) -> dict[str, Any]:
        """The DeepSpeed config this backend runs with (the user's JSON merged last)."""
        zero: dict[str, Any] = {"stage": self.zero_stage}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
        if self.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
        if self.zero_stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        return _merge(config, self._read_config(self.config_file) if self.config_file else {})

    def setup(self, module: torch.nn.Module, parameters: list[torch.nn.Parameter], optim: OptimizerConfig) -> None:
        self._init_distributed()
        import deepspeed

        if self.gradient_checkpointing:
            if not hasattr(module, "enable_gradient_checkpointing"):
                raise UserError(f"{type(module).__name__} has no gradient checkpointing",
                                where="backend.gradient_checkpointing", hint="set it to false for this model")
            module.enable_gradient_checkpointing()
        trained = {id(p) for p in parameters}
        for p in module.parameters():
            p.requires_grad_(id(p) in trained)
        self.parameters = parameters
        self.names = {id(p): n for n, p in module.named_parameters()}
        optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module.to(self.device), optimizer=optimizer, config=self.config(optim)
        )
        self.grad_clip = optim.grad_clip

    def runtime(self) -> dict[str, str]:
        """Where training runs: the device, DeepSpeed's accelerator and the process group's backend."""
        from deepspeed.accelerator import get_accelerator

        group = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
        return {"device": str(self.device), "accelerator": get_accelerator().device_name(), "process_group": group,
                "zero_stage": str(self.zero_stage), "precision": self.precision}

    def place_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A frozen module (a KL reference) beside the trained one: under ZeRO-3 it is partitioned
        over the ranks too and gathered layer by layer in its forward; otherwise it moves to the device."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        module = (module.to(self.device) if dtype is None else module.to(self.device, dtype)).requires_grad_(False).eval()
        self._frozen_modules = [*getattr(self, "_frozen_modules", []), module]
        if self.zero_stage != 3:
            return module
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                  "bf16": {"enabled": self.precision == "bf16"}, "fp16": {"enabled": self.precision == "fp16"},
                  "steps_per_print": 10**9}
        if self.offload_param:
            config["zero_optimization"]["offload_param"] = {"device": "cpu"}
        engine, *_ = deepspeed.initialize(model=module, config=config)
        self._frozen = [*getattr(self, "_frozen", []), engine]
        return engine.module

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        # The policy calls the module itself, not the engine's forward, which would start a new
        # micro-step here: without it ZeRO-3 overwrites the previous micro-batches' gradients
        # instead of adding to them.
        clear = getattr(self.engine.optimizer, "clear_backward_seen_flag", None)
        if clear is not None:
            clear()
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss)

    def _stage0_norm(self) -> float:
        """Stage 0 reports no norm: the gradients are already averaged over ranks at the boundary."""
        grads = [p.grad.detach().float() for p in self.parameters if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def step(self) -> float:
        self.engine.set_gradient_accumulation_boundary(True)
        self._last_gradient_bytes = self._gradient_bytes()
        if self.zero_stage == 0:
            norm = self._stage0_norm()
            if not math.isfinite(norm):  # fp32 stage 0 has no overflow check: drop the step ourselves
                self.engine.optimizer.zero_grad(set_to_none=True)
                self.engine.zero_grad()
                return norm
            self.engine.step()
            return norm
        if self.zero_stage == 3 and not self._finite_stage3():
            # fp32 ZeRO-3 would apply a non-finite gradient: drop it on every rank instead
            self.engine.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def weights_finite(self, parameters: list[torch.nn.Parameter]) -> bool:
        """At stage 3 the module holds empty placeholders: each rank checks its fp32 partition, and the
        ranks agree on the answer (one all-reduce); below it every rank holds whole weights."""
        if self.zero_stage != 3:
            return all(bool(torch.isfinite(p).all()) for p in parameters)
        held = list(getattr(self.engine.optimizer, "fp32_partitioned_groups_flat", []))
        return self._all_ranks(all(bool(torch.isfinite(t).all()) for t in held))

    def _all_ranks(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (one all-reduce when there are several)."""
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = bool(flag.item() > 0)
        return ok

    def _finite_stage3(self) -> bool:
        """Whether every rank's gradient partition is finite (one all-reduce)."""
        opt = self.engine.optimizer
        held = [getattr(opt, "grad_partitions_flat_buffer", None)]
        held += [p.grad for p in getattr(opt, "fp32_partitioned_groups_flat", []) if p.grad is not None]
        return self._all_ranks(all(bool(torch.isfinite(t).all()) for t in held if t is not None))

    def save(self, directory: Path) -> None:
        """Every rank writes its shard into `directory` (ZeRO's layout, tag ``backend``)."""
        self.engine.save_checkpoint(str(directory), tag="backend")

    def load(self, directory: Path) -> None:
        with _read_as_data(directory):
            path, _ = self.engine.load_checkpoint(str(directory), tag="backend")
        if path is None:
            raise UserError(f"{directory} holds no DeepSpeed checkpoint", where="--resume",
                            hint="was the run made with another backend?")

    def read_trained(self, directory: Path) -> dict[str, torch.Tensor]:
        """Full fp32 trained weights, by parameter name, from a checkpoint folder written by any number
        of ranks; in one process, without a process group."""
        import contextlib
        import io

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        folder = Path(directory) / "backend"
        with _read_as_data(directory), contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
            if any(folder.glob("*optim_states.pt")):
                state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag="backend")
            else:  # stage 0 keeps no partitions: the module's own weights (the ones the run sampled with)
                saved = load_data(folder / "mp_rank_00_model_states.pt", map_location="cpu")
                buffers = set(saved.get("buffer_names") or ())
                state = {k: v for k, v in saved["module"].items() if k not in buffers}
        return {k: v.float().contiguous() for k, v in state.items()}

    def _gradient_bytes(self) -> int:
        """Bytes of gradients this rank holds at an optimizer step (full at stage 0, a partition above)."""
        opt = self.engine.optimizer
        if hasattr(opt, "fp32_groups_gradients_flat"):  # bf16 at stages 0-1: full fp32 gradient buffers
            return sum(t.numel() * t.element_size() for t in opt.fp32_groups_gradients_flat)
        if self.zero_stage == 0:
            return sum(p.grad.numel() * p.grad.element_size() for p in self.parameters if p.grad is not None)
        if self.zero_stage == 3:
            buf = getattr(opt, "grad_partitions_flat_buffer", None)
            return buf.numel() * buf.element_size() if buf is not None else 0
        buf = getattr(opt, "grads_in_partition", None)
        if buf is not None:
            return buf.numel() * buf.element_size()
        held = [t for ts in getattr(opt, "averaged_gradients", {}).values() for t in (ts or []) if t is not None]
        if held:
            return sum(t.numel() * t.element_size() for t in held)
        return sum(p.grad.numel() * p.grad.element_size() for p in self.parameters if p.grad is not None)

    def memory(self) -> dict[str, int]:
        """Bytes this rank holds of parameters, gradients (at the last optimizer step), fp32 master
        weights and optimizer state; ``reference``: the frozen KL reference, if any."""
        opt = self.engine.optimizer
        params = sum(self._held(p) for p in self.engine.module.parameters())
        if hasattr(opt, "fp32_groups_flat_partition"):  # bf16 at stages 0-1: fp32 master partitions
            master = sum(t.numel() * t.element_size() for t in opt.fp32_groups_flat_partition)
            inner = opt.optimizer
        elif hasattr(opt, "fp32_groups"):  # bf16/fp16 at stage 0: an fp32 copy of every weight
            master = sum(p.numel() * p.element_size() for g in opt.fp32_groups for p in g)
            inner = opt.optimizer
        elif self.zero_stage == 0:
            master, inner = 0, opt
        elif self.zero_stage in (1, 2):
            master = sum(t.numel() * t.element_size() for t in opt.single_partition_of_fp32_groups)
            inner = opt.optimizer
        else:
            master = sum(t.numel() * t.element_size() for t in opt.fp32_partitioned_groups_flat)
            inner = opt.optimizer
        state = sum(v.numel() * v.element_size() for s in inner.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.dim() > 0)
        out = {"parameters": params, "gradients": self._last_gradient_bytes, "master_weights": master,
               "optimizer_state": state}
        if getattr(self, "_frozen_modules", None):
            out["reference"] = sum(self._held(p) for m in self._frozen_modules for p in m.parameters())
        return out

    @staticmethod
    def _held(p: torch.Tensor) -> int:
        held = getattr(p, "ds_tensor", None)
        return (held if held is not None else p).numel() * p.element_size()

    def barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()


def checkpoint_types() -> tuple[type, ...]:
    """The DeepSpeed types a ZeRO checkpoint holds besides tensors and plain values: its loss scalers,
    the ZeRO stage and the addresses of parameter fragments (found in the checkpoints of stages 0-3 in
    fp32 and bf16, with and without offload; fp16's dynamic scaler is the scaler's other class)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address


def _read_as_data(directory: Path) -> Any:
    """DeepSpeed reads its checkpoint files with code allowed; they are checked first (each rank checks
    every file, so all ranks stop together before any collective), then read with data only."""
    types = checkpoint_types()
    refuse_code(sorted((Path(directory) / "backend").glob("*.pt")), types)
    return data_only_loads(types)
