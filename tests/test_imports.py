"""Layering, read from the source: `grpo.core` imports no plugin, no analysis and no CLI module, the CLI
imports no plugin (it reaches components through the registry), and a plugin folder imports no other
plugin folder.

Every `import x` and `from x import y` counts, inside functions too; relative imports are resolved
against the package the file belongs to.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"core": ("grpo.plugins", "grpo.analysis", "grpo.cli"), "cli": ("grpo.plugins",)}


def module_name(path: Path, folder: Path, package: str) -> str:
    """The dotted name `path` is installed as, `folder` being installed as `package`."""
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) of every import statement in the file.

    `import a.b` gives ("a.b", []); `from a import b, c` gives ("a", ["b", "c"]), as b and c may be
    submodules; relative imports are resolved against the file's package.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                assert node.level <= len(parts), f"{path}:{node.lineno}: relative import beyond the top-level package"
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{target}" if target else base
            out.append((node.lineno, target, [alias.name for alias in node.names if alias.name != "*"]))
    return out


def reached(target: str, names: list[str], is_bad) -> list[str]:
    """The modules of one import statement that `is_bad` rejects: the module itself, else each `module.name`."""
    if is_bad(target):
        return [target]
    return [f"{target}.{name}" for name in names if is_bad(f"{target}.{name}")]


def modules_under(folder: Path, package: str):
    for path in sorted(folder.rglob("*.py")):
        if "weights" not in path.relative_to(folder).parts:
            yield path, module_name(path, folder, package)


def layer_violations(layer: str, root: Path = ROOT) -> list[str]:
    """Imports of `layer` (``core`` or ``cli``) of what it may not import."""
    def is_bad(name: str) -> bool:
        return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer])

    found = []
    for path, module in modules_under(root / layer, f"grpo.{layer}"):
        for line, target, names in imports_of(path, module):
            found += [f"{path.relative_to(root)}:{line} imports {m}" for m in reached(target, names, is_bad)]
    return found


def core_violations(root: Path = ROOT) -> list[str]:
    return layer_violations("core", root)


def plugin_folders(root: Path = ROOT) -> list[str]:
    return sorted(p.name for p in (root / "plugins").iterdir() if (p / "__init__.py").is_file())


def plugin_folder_of(name: str, folders: list[str]) -> str | None:
    """The plugin folder `name` (a dotted module) lies in, if any."""
    parts = name.split(".")
    return parts[2] if parts[:2] == ["grpo", "plugins"] and len(parts) > 2 and parts[2] in folders else None


def top_level_plugin_modules(root: Path = ROOT) -> dict[str, list[tuple[int, str, list[str]]]]:
    """The plugins package itself and its top-level modules (builtin, policies, ...), with their imports."""
    out = {}
    for path in sorted((root / "plugins").glob("*.py")):
        module = module_name(path, root / "plugins", "grpo.plugins")
        out[module] = imports_of(path, module)
    return out


def shared_plugin_modules(root: Path = ROOT) -> set[str]:
    """Top-level modules of the plugins package that import no plugin folder: any folder may use them.
    (`builtin`, which registers every folder, is not one of them.)"""
    folders = plugin_folders(root)
    shared = set()
    for module, imports in top_level_plugin_modules(root).items():
        if not any(reached(t, names, lambda n: plugin_folder_of(n, folders) is not None) for _, t, names in imports):
            shared.add(module)
    return shared


def plugin_folder_violations(root: Path = ROOT) -> list[str]:
    folders, shared = plugin_folders(root), shared_plugin_modules(root)
    found = []
    for folder in folders:

        def is_bad(name: str, folder: str = folder) -> bool:
            if not name.startswith("grpo.plugins.") and name != "grpo.plugins":
                return False
            other = plugin_folder_of(name, folders)
            if other is not None:
                return other != folder
            # the plugins package or one of its top-level modules: allowed when it imports no folder
            top = ".".join(name.split(".")[:3])
            return top not in shared and name not in shared

        for path, module in modules_under(root / "plugins" / folder, f"grpo.plugins.{folder}"):
            for line, target, names in imports_of(path, module):
                found += [f"{path.relative_to(root)}:{line} imports {m}" for m in reached(target, names, is_bad)]
    return found


def test_core_imports_no_plugin_analysis_or_cli():
    found = core_violations()
    assert not found, "grpo.core must not import grpo.plugins, grpo.analysis or grpo.cli:\n" + "\n".join(found)


def test_cli_imports_no_plugin():
    found = layer_violations("cli")
    assert not found, "grpo.cli reaches components through the registry, not by importing grpo.plugins:\n" + "\n".join(found)


def test_the_checks_resolve_relative_and_nested_imports(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text(
        "from . import errors\nfrom ..plugins import trees\nimport grpo.cli.main\nfrom grpo import plugins\n"
        "def f():\n    from grpo.analysis.report import x\n")
    a = Path("core", "a.py")
    assert sorted(core_violations(tmp_path)) == [
        f"{a}:2 imports grpo.plugins", f"{a}:3 imports grpo.cli.main", f"{a}:4 imports grpo.plugins",
        f"{a}:6 imports grpo.analysis.report",
    ]
    plugins = tmp_path / "plugins"
    for folder in ("one", "two"):
        (plugins / folder).mkdir(parents=True)
        (plugins / folder / "__init__.py").write_text("")
    (plugins / "__init__.py").write_text("")
    (plugins / "policies.py").write_text("import torch\n")
    (plugins / "builtin.py").write_text("from .one import x\nfrom .two import y\n")
    (plugins / "one" / "x.py").write_text(
        "from ..two import y\nfrom ..policies import merged\nfrom grpo.plugins import builtin\nfrom . import w\n"
        "from grpo.plugins.one.w import q\nfrom grpo.core.tree import Rollout\ndef f():\n    import grpo.plugins.two.y\n")
    assert shared_plugin_modules(tmp_path) == {"grpo.plugins", "grpo.plugins.policies"}
    x = Path("plugins", "one", "x.py")
    assert sorted(plugin_folder_violations(tmp_path)) == [
        f"{x}:1 imports grpo.plugins.two", f"{x}:3 imports grpo.plugins.builtin", f"{x}:8 imports grpo.plugins.two.y",
    ]


def test_plugin_folders_do_not_import_each_other():
    found = plugin_folder_violations()
    assert not found, ("a plugin folder may import grpo.core, itself and the shared top-level modules "
                       f"{sorted(shared_plugin_modules())}, not another folder:\n" + "\n".join(found))


def ability_probes(root: Path = ROOT) -> list[str]:
    """Every getattr/hasattr call in core/ and cli/ outside the registry (which reads what a factory
    declares and completes a component's optional members once, when it is built)."""
    found = []
    for folder in ("core", "cli"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.relative_to(root) == Path("core", "registry.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.func.id}")
    return found


def test_no_ability_probes_in_core_or_cli():
    """Components are called through their declared Protocol members: a missing optional member gets its
    default once, when the component is built (grpo.core.registry.complete), never asked for later."""
    found = ability_probes()
    assert not found, "getattr/hasattr outside core/registry.py: " + ", ".join(found)


def test_the_probe_check_finds_probes(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "cli").mkdir()
    (tmp_path / "core" / "registry.py").write_text("x = getattr(object, 'a', None)\n")
    (tmp_path / "core" / "engine.py").write_text("def f(c):\n    return hasattr(c, 'memory')\n")
    (tmp_path / "cli" / "run.py").write_text("import os\nn = getattr(os, 'cpu_count')\n")
    assert ability_probes(tmp_path) == [f"{Path('core', 'engine.py')}:2 hasattr", f"{Path('cli', 'run.py')}:2 getattr"]


def test_the_engine_is_short_and_cores_functions_are_readable():
    """The engine stays a short loop over declared Protocol members; core's functions stay readable."""
    engine = ROOT / "core" / "engine.py"
    assert len(engine.read_text().splitlines()) <= 250
    long = []
    for path in sorted((ROOT / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "functions in core/ longer than 60 lines: " + ", ".join(long)
