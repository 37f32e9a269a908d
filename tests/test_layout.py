"""The package's layout rules (DESIGN.md): they keep the next module easy to add."""

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import jaxprune as jp

PACKAGE = Path(jp.__file__).parent


def modules():
    return [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="jaxprune.")]


def test_no_module_shares_its_name_with_an_exported_function():
    exported = {name for name in jp.__all__ if not isinstance(getattr(jp, name), types.ModuleType)}
    clashes = [m for m in modules() if m.split(".")[-1] in exported]
    assert clashes == []
    for m in modules():  # and importing a module never replaces an export
        importlib.import_module(m)
    assert all(not isinstance(getattr(jp, name), types.ModuleType) for name in exported)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxprune"):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []
