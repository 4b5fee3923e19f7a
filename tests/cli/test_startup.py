"""The quick commands import only what they need: registering a component imports none of the model,
reward, distributed or plotting libraries, which load when a component is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("diffusers", "transformers", "peft", "deepspeed", "matplotlib", "scipy", "tensorboard", "wandb")

# Runs the CLI in this process and prints, at exit, which heavy packages were imported.
PROBE = """
import atexit, json, runpy, sys
HEAVY = {heavy!r}
atexit.register(lambda: print("IMPORTED=" + json.dumps([h for h in HEAVY if h in sys.modules]), file=sys.stderr))
sys.argv = ["grpo", *{args!r}]
runpy.run_module("grpo.cli.main", run_name="__main__")
"""


def imported(*args: str) -> tuple[int, list[str], str]:
    code = PROBE.format(heavy=HEAVY, args=list(args))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    line = [x for x in proc.stderr.splitlines() if x.startswith("IMPORTED=")]
    assert line, proc.stderr
    return proc.returncode, json.loads(line[-1].removeprefix("IMPORTED=")), proc.stdout


@pytest.mark.parametrize("args", [
    ("plugins", "list", "--json"),
    ("validate", "recipes/shapes_dance.toml"),
    ("plan", "recipes/shapes_branch.toml"),
    ("plugins", "show", "flux"),
    ("--help",),
])
def test_quick_commands_import_no_heavy_package(args):
    code, heavy, out = imported(*args)
    assert code == 0, out
    assert heavy == [], f"grpo {' '.join(args)} imported {heavy}"
    if args[:2] == ("plugins", "list"):  # the listing is whole although nothing heavy was imported
        names = {(e["kind"], e["name"]) for e in json.loads(out)}
        assert {("model", "flux"), ("model", "wan-t2v"), ("reward", "hpsv2"), ("backend", "deepspeed")} <= names


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: building the shapes model imports diffusers and transformers."""
    code = ("import sys; from grpo.testing import tiny_policy; tiny_policy(); "
            "print(sorted(h for h in ('diffusers', 'transformers') if h in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "['diffusers', 'transformers']", out.stderr
