"""Tiny generated medical datasets in every layout (mixed formats) for the data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from medical_files import gray, save_dicom, save_jpeg, save_png


@pytest.fixture
def make_class_folders(tmp_path: Path) -> Callable[..., Path]:
    """``root/<normal>/`` and ``root/<abnormal>/`` with mixed formats (extensionless JPEG, 16-bit PNG, DICOM)."""

    def make(
        name: str = "ds",
        normal: int = 10,
        abnormal: int = 4,
        normal_dir: str = "no",
        abnormal_dir: str = "yes",
        size: int = 16,
    ) -> Path:
        root = tmp_path / name
        (root / normal_dir).mkdir(parents=True)
        (root / abnormal_dir).mkdir(parents=True)
        for i in range(normal):
            kind = i % 3
            if kind == 0:
                save_jpeg(root / normal_dir / f"N{i}", gray(size))  # BrainMRI style: no extension
            elif kind == 1:
                save_png(root / normal_dir / f"n{i}.PNG", gray(size).astype(np.uint16) * 257)  # 16-bit
            else:
                save_dicom(root / normal_dir / f"n{i}.dcm", gray(size).astype(np.uint16) * 4, window=(600.0, 800.0))
        for i in range(abnormal):
            save_jpeg(root / abnormal_dir / f"Y{i}.JPG", gray(size, lesion=True))
        return root

    return make


@pytest.fixture
def make_split_folders(tmp_path: Path) -> Callable[..., Path]:
    """BMAD-like ``train/good``, ``valid|test/good``, ``valid|test/Ungood/img`` + ``/label`` masks."""

    def make(
        name: str = "bmad", train: int = 6, test_good: int = 3, test_bad: int = 3, valid: bool = True, size: int = 16
    ) -> Path:
        root = tmp_path / name
        for i in range(train):
            save_png(root / "train" / "good" / f"{i:03d}.png", gray(size))
        splits = ["test", "valid"] if valid else ["test"]
        for split in splits:
            for i in range(test_good):
                save_png(root / split / "good" / f"{split}_g{i}.png", gray(size))
            for i in range(test_bad):
                save_png(root / split / "Ungood" / "img" / f"{split}_b{i}.png", gray(size, lesion=True))
                mask = np.zeros((size, size), np.uint8)
                mask[size // 4 : size // 2, size // 4 : size // 2] = 255
                save_png(root / split / "Ungood" / "label" / f"{split}_b{i}.png", mask)
        return root

    return make


@pytest.fixture
def make_labels_file(tmp_path: Path) -> Callable[..., Path]:
    """HeadCT-like ``head_ct/NNN.png`` + ``labels.csv`` with header ``id, hemorrhage`` (note the space)."""

    def make(name: str = "headct", normal: int = 8, abnormal: int = 4, size: int = 16) -> Path:
        root = tmp_path / name
        lines = ["id, hemorrhage"]
        for i in range(abnormal + normal):
            is_abnormal = i < abnormal
            save_png(root / "head_ct" / f"{i:03d}.png", np.stack([gray(size, lesion=is_abnormal)] * 3, axis=-1))
            lines.append(f"{i},{int(is_abnormal)}")
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        return root

    return make
