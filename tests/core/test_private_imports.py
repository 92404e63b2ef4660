"""Library code imports no private name from another module (``from m import _x`` or
``m._x``): a name used across modules is public, so renaming it is a visible API change."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
LIBRARY = [ROOT / "fcos_core", *sorted((ROOT / "plugins").glob("*/fcos_plugin_*"))]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fcos"):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(
                a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("fcos")
            )
    found.extend(
        f"{path}:{node.lineno}: {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
    )
    return found


def test_library_code_imports_no_private_names():
    files = [p for root in LIBRARY for p in root.rglob("*.py")]
    assert len(files) > 100  # the scan sees the library
    assert [hit for p in files for hit in private_imports(p)] == []


def test_the_check_finds_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from fcos_core.cli.main import _x\nimport fcos_core.yuv as y\ny._z()\n")
    assert len(private_imports(bad)) == 2
