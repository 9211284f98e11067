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


@pytest.fixture(scope="session")
def demo_datamodule(demo_root: Path):
    """A factory of fresh anomalib ``Folder`` datamodules over ``demo_root`` (batches of 4 / 8, no workers)."""
    from anomalib.data import Folder

    def build():
        return Folder(
            name="demo_tiny",
            root=demo_root,
            normal_dir="train/good",
            normal_test_dir="test/good",
            abnormal_dir="test/lesion",
            train_batch_size=4,
            eval_batch_size=8,
            num_workers=0,
            val_split_mode="same_as_test",
        )

    return build
