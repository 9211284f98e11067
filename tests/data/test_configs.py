"""The four setting configs parse with anomalib's datamodule parser and build the intended splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from anomalib.data import AnomalibDataModule
from jsonargparse import ArgumentParser

from anomalib_sir.data import MedicalDataModule, UniversalDataModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _point_at(section: dict[str, Any], roots: dict[str, Path]) -> None:
    """Replace the ../shared/data roots of a data section (or its members) with generated datasets."""
    members = section["init_args"].get("members")
    for entry in members if members is not None else [section]:
        entry["init_args"]["root"] = str(roots[entry["class_path"].rsplit(".", 1)[1]])


def _instantiate(section: dict[str, Any]) -> AnomalibDataModule:
    parser = ArgumentParser()
    parser.add_subclass_arguments(AnomalibDataModule, "data", required=True, fail_untyped=False)
    config = parser.parse_object({"data": section})
    return parser.instantiate_classes(config)["data"]


@pytest.mark.parametrize(
    ("setting", "per_dataset_train"),
    [
        ("one_shot_universal", [1, 1]),
        ("full_shot_universal", [8, 8]),
        ("one_shot_specialized", [1]),
        ("full_shot_specialized", [8]),
    ],
)
def test_setting_config(
    setting: str,
    per_dataset_train: list[int],
    make_labels_file: Callable[..., Path],
    make_class_folders: Callable[..., Path],
) -> None:
    config = yaml.safe_load((CONFIGS / f"{setting}.yaml").read_text())
    assert config["model"]["class_path"] == "anomalib_sir.Sir"
    assert config["model"]["init_args"]["image_size"] == [128, 128]  # the measured recipe (README results)
    assert config["trainer"]["accelerator"] == "cpu"
    assert "../shared/data" in (CONFIGS / f"{setting}.yaml").read_text()
    roots = {
        "LabelsFile": make_labels_file("headct", normal=20, abnormal=4),
        "ClassFolders": make_class_folders("chest", 20, 4, normal_dir="NORMAL", abnormal_dir="PNEUMONIA"),
    }
    section = config["data"]
    _point_at(section, roots)
    datamodule = _instantiate(section)
    datamodule.setup()
    if "universal" in setting:
        assert isinstance(datamodule, UniversalDataModule)
        assert datamodule.dataset_names == ["headct", "chest_xray"]
        counts = datamodule.train_data.samples.groupby("dataset").size()
        assert [int(counts[name]) for name in datamodule.dataset_names] == per_dataset_train
    else:
        assert isinstance(datamodule, MedicalDataModule)
        assert len(datamodule.train_data) == per_dataset_train[0]
    assert datamodule.num_workers == 0
