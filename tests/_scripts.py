"""Load a script of ``benchmarks/`` as a module (they are scripts, not a package), for the tests that call its
functions directly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, module_name: str | None = None):
    """Execute ``benchmarks/<name>.py`` as a fresh module named ``module_name`` (default ``name``) and return it."""
    spec = importlib.util.spec_from_file_location(module_name or name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
