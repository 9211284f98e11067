"""Shared fixtures: tiny generated data only (the suite never needs ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SIR demo dataset (retina crops, synthetic lesions) in anomalib Folder layout."""
    from anomalib_sir.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(root, "retina", image_size=64, num_train=12, num_test_normal=8, num_test_abnormal=8)
