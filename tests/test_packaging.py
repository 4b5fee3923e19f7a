"""The package builds as a wheel that carries the code folders and the bundled weights."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_packages_and_weights_and_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("grpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("grpo/core/engine.py", "grpo/cli/main.py", "grpo/plugins/builtin.py",
                     "grpo/plugins/shapes/weights/base/unet/diffusion_pytorch_model.safetensors",
                     "grpo/plugins/shapes/weights/base/tokenizer/tokenizer.json"):
        assert required in names, required
    assert not any(n.startswith(("core/", "plugins/", "cli/", "analysis/")) for n in names)  # no generic top-level names
    for folder, package in (("core", "grpo/core"), ("plugins", "grpo/plugins"), ("cli", "grpo/cli"),
                            ("testing", "grpo/testing"), ("analysis", "grpo/analysis")):  # every module is packaged
        for module in (ROOT / folder).rglob("*.py"):
            if "weights" not in module.parts:
                assert f"{package}/{module.relative_to(ROOT / folder).as_posix()}" in names, module
    # unpack it and import from there, with the development install's import hook removed
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')"
        " and '__editable__' not in repr(f)]; "
        f"sys.path.insert(0, {str(site)!r}); "
        "import grpo.plugins.shapes.policy as p; assert p.__file__.startswith(sys.path[0]), p.__file__; "
        "m = p.ShapesPolicy(device='cpu'); print(sum(x.numel() for x in m.denoiser.parameters()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip().splitlines()[-1]) > 1_000_000


@pytest.mark.slow
def test_wan_gpu_benchmark_runs_on_a_small_transformer(tmp_path):
    """The GPU benchmark's code path, on a CPU with a tiny transformer (its numbers are not results)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wan_gpu" / "run.py"), "--tiny", "--cpu",
                           "--iterations", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "results_smoke.md").read_text()
    assert table.count("| BranchGRPO") == 3 and table.count("| DanceGRPO (G 16, f ") == 2
    rows = __import__("json").loads((tmp_path / "results_smoke.json").read_text())["rows"]
    assert rows["BranchGRPO (splits 0, 3, 6, 9)"]["rollout_forwards"] == 203  # the paper's tree, counted exactly
    assert rows["BranchGRPO (splits 0, 3, 6, 9)"]["trained_units"] == 218
    assert rows["BranchGRPO, depth pruning"]["trained_units"] == 138  # the paper's 8.625 edges per leaf
    assert rows["DanceGRPO (G 16, f 0.6)"]["rollout_forwards"] == 305
    assert rows["DanceGRPO (G 16, f 1.0)"]["trained_units"] == 320
    # DiffusionNFT: each of the 16 leaves at floor(20 * 0.99) = 19 noise levels; chains roll out 16 x 20 forwards
    assert rows["DiffusionNFT, 16 chains"]["rollout_forwards"] == 320
    assert rows["DiffusionNFT, the tree"]["rollout_forwards"] == 203
    assert rows["DiffusionNFT, 16 chains"]["trained_units"] == rows["DiffusionNFT, the tree"]["trained_units"] == 304
    assert table.count("| DiffusionNFT") == 2


@pytest.mark.slow
def test_gpu_checks_run_the_real_recipe_families_on_tiny_models(tmp_path):
    """The GPU-path checks on a CPU: `grpo run` of a tiny FLUX with its recipe's DeepSpeed backend
    records where it trained and its on-policy ratios (bf16 rollout and update agree to 1e-3)."""
    import json

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wan_gpu" / "gpu_checks.py"), "--cpu",
                           "--only", "FLUX deepspeed", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "checks_smoke.json").read_text())["rows"]["FLUX deepspeed"]
    assert row["rc"] == 0, row.get("error")
    assert row["runtime"]["backend"] == {"device": "cpu", "accelerator": "cpu", "process_group": "gloo",
                                         "zero_stage": "2", "precision": "bf16"}
    assert len(row["updates"]) == 2 and all(abs(u["update/ratio_mean"] - 1) < 1e-3 for u in row["updates"])
    assert "| FLUX deepspeed | 0 | cpu | cpu | gloo | bf16 |" in (tmp_path / "checks_smoke.md").read_text()
