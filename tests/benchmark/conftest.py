"""Fixtures that import the stand-alone scripts under ``benchmarks/`` (not part of the package) as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load_script(name: str) -> Iterator[ModuleType]:
    """Import ``benchmarks/<name>.py`` under ``name`` for the duration of a test module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script resolve their module through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


@pytest.fixture(scope="module")
def across_splits() -> Iterator[ModuleType]:
    """``benchmarks/across_splits.py``."""
    yield from _load_script("across_splits")
