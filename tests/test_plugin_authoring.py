"""Plugin authoring end to end, in a fresh virtual environment next to grpo (slow).

The environment is new and empty; a .pth file makes the running interpreter's packages (grpo and
its dependencies, already installed) visible in it, so that only the plugin is installed there.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "grpo-example-plugin"
pytestmark = pytest.mark.slow


@pytest.fixture
def venv(tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "parent-environment.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def _run(python, *args, cwd=None, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GRPO_DISABLE_PLUGIN_AUTOLOAD", None)
    proc = subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _install(python, folder):
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(folder))


def test_example_plugin_installs_lists_runs_and_passes_its_tests(venv, tmp_path):
    _install(venv, EXAMPLE)
    rows = json.loads(_run(venv, "-m", "grpo.cli.main", "plugins", "list", "--json"))
    mine = {(r["kind"], r["name"]) for r in rows if r["distribution"] == "grpo-example-plugin 0.1.0"}
    assert mine == {("reward", "colourfulness"), ("advantage", "rank"), ("pruner", "top-advantage"),
                    ("strategy", "rank-grpo")}
    out = tmp_path / "run"
    _run(venv, "-m", "grpo.cli.main", "run", str(EXAMPLE / "recipes" / "shapes_rank.toml"), "--set",
         "train.iterations=1", "--set", "train.prompts_per_iteration=2", "--set", "eval.every=0", "--out", str(out),
         "--quiet")
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in train if r["kind"] == "train"] == [0]
    _run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=EXAMPLE)


@pytest.mark.parametrize("kind", ["reward", "strategy", "pruner", "advantage", "topology", "objective", "solver",
                                  "sampler"])
def test_plugins_new_package_installs_and_passes_its_tests(venv, tmp_path, kind):
    folder = tmp_path / f"grpo-my-{kind}"
    _run(venv, "-m", "grpo.cli.main", "plugins", "new", kind, f"my-{kind}", "--out", str(folder))
    _install(venv, folder)
    _run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=folder)
    shown = _run(venv, "-m", "grpo.cli.main", "plugins", "show", f"my-{kind}")
    assert f"grpo-my-{kind} 0.1.0" in shown or f"my-{kind}" in shown
