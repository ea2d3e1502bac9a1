"""The package's layers: data/ reads and crops datasets, and knows nothing of training (engine/) or
of metrics (eval/); engine/ modules each do one job and stay readable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lofr"
DATA_MODULES = sorted(PKG.glob("data/*.py"))
FORBIDDEN = ("lofr.engine", "lofr.eval")


def imported_modules(source: str, package: str) -> set[str]:
    """Every module an ``import`` / ``from ... import`` anywhere in ``source`` names (also inside
    functions), relative imports resolved against ``package`` (the module's package, e.g. lofr.data)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # from lofr import engine
    return names


def test_imported_modules_sees_absolute_relative_and_nested_imports():
    src = ("import os\nfrom .topdown import x\nfrom .. import eval\n"
           "def f():\n    from lofr.engine.trainer import train\n")
    found = imported_modules(src, "lofr.data")
    assert {"os", "lofr.data.topdown", "lofr.eval", "lofr.engine.trainer"} <= found
    assert not any(m.startswith(FORBIDDEN) for m in imported_modules("from .errors import DataError", "lofr.data"))


@pytest.mark.parametrize("path", DATA_MODULES, ids=lambda p: p.name)
def test_data_imports_nothing_from_engine_or_eval(path):
    bad = sorted(m for m in imported_modules(path.read_text(), "lofr.data") if m.startswith(FORBIDDEN))
    assert not bad, f"lofr/data/{path.name} imports {bad}: data must not depend on engine/ or eval/"


def test_importing_every_data_module_loads_no_engine_or_eval_module():
    names = ", ".join(f"lofr.data.{p.stem}" for p in DATA_MODULES if p.stem != "__init__")
    code = (f"import sys, importlib\nfor n in '{names}'.split(', '): importlib.import_module(n)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lofr.engine', 'lofr.eval'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout


@pytest.mark.parametrize("path", sorted(PKG.glob("engine/*.py")), ids=lambda p: p.name)
def test_engine_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= 400, f"lofr/engine/{path.name} has {n} lines: split it along its jobs (see trainer.py's docstring)"
