"""Every docstring example in the package runs and prints what it says (examples cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import anomalib_sir

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(anomalib_sir.__path__, prefix="anomalib_sir.")
    if not info.name.endswith("__main__")
)


def test_every_module_is_collected() -> None:
    assert {"anomalib_sir.models.sir.torch_model", "anomalib_sir.data.io", "anomalib_sir.deploy.parity"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module_name}"
