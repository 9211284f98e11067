"""Benchmark cells read data through the product's datamodules: fixed splits, seeded draws, shared normals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.data import cell_datamodule
from anomalib_sir.data import ClassFolders, UniversalDataModule


def _class_folders(root: Path, normal: int, abnormal: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(len(str(root)))
    for folder, count in (("NORMAL", normal), ("PNEUMONIA", abnormal)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, size=size[::-1], dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{folder.lower()}_{i:02d}.png")
    return root


def _config(tmp_path: Path, **overrides) -> BenchmarkConfig:
    blocks = [
        {
            "class_path": "anomalib_sir.data.ClassFolders",
            "init_args": {"root": str(_class_folders(tmp_path / name, 20, 10, (24, 20))), "abnormal_dirs": "PNEUMONIA"},
        }
        for name in ("a", "b")
    ]
    raw = {"datasets": blocks, "models": {"SIR": {"class_path": "anomalib_sir.Sir"}}, "eval_batch_size": 4}
    return BenchmarkConfig.from_dict({**raw, **overrides})


def _paths(dataset) -> set[str]:
    return set(dataset.samples["image_path"])


def test_specialised_cell_is_the_blocks_datamodule_with_the_cells_shot_and_seed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    datamodule = cell_datamodule(config, ["a"], shot=1, seed=3)
    assert isinstance(datamodule, ClassFolders)
    assert (datamodule.name, datamodule.shot, datamodule.seed, datamodule.eval_batch_size) == ("a", 1, 3, 4)
    datamodule.setup()
    assert len(datamodule.train_data) == 1
    # from_test (the grid default): a labelled validation hold-out with both classes, disjoint from test
    val_labels = set(datamodule.val_data.samples["label_index"])
    assert val_labels == {0, 1}
    assert not _paths(datamodule.val_data) & _paths(datamodule.test_data)
    assert not _paths(datamodule.train_data) & (_paths(datamodule.val_data) | _paths(datamodule.test_data))


def test_split_seed_fixes_test_and_validation_while_the_seed_draws_the_normals(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cells = [cell_datamodule(config, ["a"], shot=1, seed=seed) for seed in range(6)]
    full = cell_datamodule(config, ["a"], shot=None, seed=0)
    for datamodule in [*cells, full]:
        datamodule.setup()
    assert len({frozenset(_paths(d.test_data)) for d in [*cells, full]}) == 1
    assert len({frozenset(_paths(d.val_data)) for d in [*cells, full]}) == 1
    assert len({frozenset(_paths(d.train_data)) for d in cells}) > 1  # the draws differ
    assert all(_paths(d.train_data) <= _paths(full.train_data) for d in cells)
    other = cell_datamodule(BenchmarkConfig.from_dict({**config.to_dict(), "split_seed": 1}), ["a"], 1, 0)
    other.setup()
    assert _paths(other.test_data) != _paths(full.test_data)


def test_universal_cell_unites_the_members_and_shares_the_specialised_draws(tmp_path: Path) -> None:
    config = _config(tmp_path, val_split_mode="from_train")
    universal = cell_datamodule(config, ["a", "b"], shot=1, seed=2)
    assert isinstance(universal, UniversalDataModule)
    universal.setup()
    assert universal.dataset_names == ["a", "b"]
    specialised = [cell_datamodule(config, [name], shot=1, seed=2) for name in ("a", "b")]
    for datamodule in specialised:
        datamodule.setup()
    assert _paths(universal.train_data) == set().union(*(_paths(d.train_data) for d in specialised))
    assert [_paths(t) for t in universal.test_datasets] == [_paths(d.test_data) for d in specialised]
    # from_train: validation is normal-only and comes from the training pool
    assert all(set(v.samples["label_index"]) == {0} for v in universal.val_datasets)


def test_a_missing_dataset_folder_fails_when_the_run_is_prepared(tmp_path: Path) -> None:
    from anomalib_sir.benchmark.runner import prepare_run

    config = _config(tmp_path, results_root=str(tmp_path / "results"))
    raw = config.to_dict()
    raw["datasets"][1]["init_args"]["root"] = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing"):
        prepare_run(BenchmarkConfig.from_dict({**raw}))
