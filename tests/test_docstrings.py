"""Every docstring example in the package runs and prints what it says (examples cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest

import anomalib_sir

PACKAGE_MODULES = (info.name for info in pkgutil.walk_packages(anomalib_sir.__path__, prefix="anomalib_sir."))
MODULES = [*sorted(name for name in PACKAGE_MODULES if not name.endswith("__main__")), "anomalib_sir_hook"]
#: The benchmark scripts (not a package): their examples run too.
SCRIPTS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


def test_every_module_is_collected() -> None:
    assert {"anomalib_sir.models.sir.torch_model", "anomalib_sir.data.io", "anomalib_sir.deploy.parity"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module_name}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_script_examples(script: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {script.name}"
