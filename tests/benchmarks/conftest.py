"""The benchmark scripts are not a package: tests load them from benchmarks/ by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """`benchmarks/<name>.py` as a module (registered under `name`, as its env runners import it)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def le():
    return load_benchmark("label_efficiency")


@pytest.fixture(scope="module")
def pipeline():
    return load_benchmark("pipeline")
