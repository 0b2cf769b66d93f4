"""The installed shape: one ``ntkrobust`` namespace, lazy public surfaces, ``python -m ntkrobust``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_only_the_namespace_is_importable(tmp_path):
    """Outside the checkout the owner's folders exist only as ntkrobust.<folder>."""
    done = _python("import ntkrobust.kernels, ntkrobust.bridge, ntkrobust.attacks, ntkrobust.studies", tmp_path)
    assert done.returncode == 0, done.stderr
    for generic in ("kernels", "bridge", "attacks", "plots", "cli", "studies"):
        done = _python(f"import {generic}", tmp_path)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, generic


def test_python_dash_m_runs_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ntkrobust", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "two-layer" in done.stdout and "make-npz" in done.stdout


@pytest.mark.parametrize(("package", "table"), [("kernels", "_PUBLIC"), ("bridge", "_TORCH_HALF")])
def test_lazy_public_surface_lists_what_loads(package, table):
    import importlib

    module = importlib.import_module(f"ntkrobust.{package}")
    lazy = getattr(module, table)
    eager = [name for name in module.__all__ if name not in lazy]
    assert len(set(module.__all__)) == len(module.__all__)
    assert all(hasattr(module, name) for name in eager)
    for name, where in lazy.items():
        assert name in module.__all__
        assert getattr(module, name) is getattr(importlib.import_module(where), name)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_public_surfaces_name_the_modules_that_define_them():
    """The TYPE_CHECKING imports (what editors see) and the lazy tables agree line by line."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for package, table in (("kernels", "_PUBLIC"), ("bridge", "_TORCH_HALF")):
        tree = ast.parse((root / package / "__init__.py").read_text())
        checked: dict[str, str] = {}
        lazy: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                for imp in node.body:
                    assert isinstance(imp, ast.ImportFrom)
                    checked |= {alias.name: str(imp.module) for alias in imp.names}
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == table:
                lazy = ast.literal_eval(node.value)
        assert checked == lazy, package
