"""docs/plugins.md: a section for every hook, and every code example runs as written."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grpo.cli.main import app
from grpo.core import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_every_hookspec_has_a_documented_section():
    text = DOC.read_text()
    headings = set(re.findall(r"^## (grpo_\w+)$", text, flags=re.M))
    hooks = {name for name in dir(hookspecs) if name.startswith("grpo_register_")}
    missing = sorted(hooks - headings)
    assert not missing, f"docs/plugins.md has no '## <hook>' section for: {', '.join(missing)}"
    assert headings <= hooks, f"sections for hooks that do not exist: {sorted(headings - hooks)}"


def test_code_examples_run(tiny_model_dir):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 10
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/plugins.md[python block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"python block {i} of docs/plugins.md fails: {type(e).__name__}: {e}")


@pytest.mark.parametrize("args,message", [(["rewrd", "x"], "did you mean 'reward'"),
                                          (["reward", "My_Reward"], "not valid")])
def test_plugins_new_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(app, ["plugins", "new", *args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "p").exists()


def test_plugins_new_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["plugins", "new", "reward", "r", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
