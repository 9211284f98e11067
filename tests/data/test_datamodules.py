"""Layout datamodules: right counts, no train/test overlap, seeded reproducibility, k-shot, clear errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.data import AnomalibDataModule
from medical_files import gray, save_jpeg, save_nifti, save_png

from anomalib_sir.data import (
    ClassFolders,
    DataJson,
    ImageReadError,
    LabelsFile,
    ShotError,
    SirDataset,
    SplitFolders,
    assign_splits,
)


def _paths(dataset: SirDataset) -> set[str]:
    return set(dataset.samples["image_path"])


def _labels(dataset: SirDataset) -> list[int]:
    return dataset.samples["label_index"].astype(int).tolist()


def test_labels_file_layout(make_labels_file: Callable[..., Path], tmp_path: Path) -> None:
    root = make_labels_file(normal=10, abnormal=4)
    datamodule = LabelsFile(root, shot=2, num_workers=0, split_dir=tmp_path / "run")
    assert isinstance(datamodule, AnomalibDataModule)
    datamodule.setup()
    # 10 normals: 5 test; pool 5 -> 1 validation hold-out, 2 shots, 2 unused
    assert len(datamodule.train_data) == 2
    assert len(datamodule.val_data) == 1
    assert sorted(_labels(datamodule.test_data)) == [0] * 5 + [1] * 4
    assert not _paths(datamodule.train_data) & _paths(datamodule.test_data)
    assert not _paths(datamodule.val_data) & (_paths(datamodule.test_data) | _paths(datamodule.train_data))
    # the split is written for reproducibility
    record = pd.read_csv(tmp_path / "run" / "splits" / f"{root.name}.csv")
    assert set(record.loc[record["split"] == "train", "image_path"]) == _paths(datamodule.train_data)
    assert len(record) == 14


def test_labels_file_configurable_columns_and_missing_ids(tmp_path: Path) -> None:
    for i in range(6):
        save_png(tmp_path / "imgs" / f"{i:04d}.png", gray())
    rows = "".join(f"{i},{'ok' if i < 4 else 'bleed'}\n" for i in range(6))
    (tmp_path / "meta.csv").write_text("File , Diagnosis\n" + rows)
    frame = LabelsFile(
        tmp_path,
        image_dir="imgs",
        labels_file="meta.csv",
        id_column="file",
        label_column="diagnosis",
        normal_label="OK",
        num_workers=0,
    ).make_samples()
    assert sorted(frame["label_index"].tolist()) == [0, 0, 0, 0, 1, 1]
    (tmp_path / "meta.csv").write_text("File,Diagnosis\n17,ok\n0,ok\n")
    with pytest.raises(ValueError, match=r"1 id\(s\) have no image.*'17'"):
        LabelsFile(
            tmp_path, image_dir="imgs", labels_file="meta.csv", id_column="file", label_column="diagnosis"
        ).make_samples()
    with pytest.raises(ValueError, match="no column 'hemorrhage'"):
        LabelsFile(tmp_path, image_dir="imgs", labels_file="meta.csv", id_column="file").make_samples()


def test_class_folders_mixed_formats_load(make_class_folders: Callable[..., Path]) -> None:
    root = make_class_folders(normal=9, abnormal=4)  # extensionless JPEG, 16-bit PNG, DICOM normals
    datamodule = ClassFolders(root, normal_dir="no", abnormal_dirs=["yes"], shot=None, num_workers=0)
    datamodule.setup()
    assert (len(datamodule.train_data), len(datamodule.val_data)) == (4, 1)  # round(4.5) = 4 test normals
    assert sorted(_labels(datamodule.test_data)) == [0] * 4 + [1] * 4
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape == (8, 3, 16, 16)
    assert batch.image.dtype == torch.float32
    assert 0.0 <= float(batch.image.min()) <= float(batch.image.max()) <= 1.0
    assert sorted(batch.gt_label.tolist()) == [0] * 4 + [1] * 4
    assert {Path(p).suffix for p in batch.image_path} == {"", ".PNG", ".dcm", ".JPG"}


def test_class_folders_everything_else_is_abnormal(tmp_path: Path) -> None:
    for folder, count in (("NORMAL", 4), ("CNV", 2), ("DME", 1), ("DRUSEN", 1)):
        for i in range(count):
            save_png(tmp_path / folder / f"{folder}{i}.png", gray())
    (tmp_path / "EMPTY").mkdir()
    datamodule = ClassFolders(tmp_path, normal_dir="NORMAL", num_workers=0)
    datamodule.setup()
    assert _labels(datamodule.test_data).count(1) == 4  # empty implicit folder skipped with a warning


def test_empty_and_missing_class_folders_fail_clearly(make_class_folders: Callable[..., Path]) -> None:
    root = make_class_folders(normal=4, abnormal=2)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"Abnormal folder contains no images: .*empty"):
        ClassFolders(root, normal_dir="no", abnormal_dirs=["yes", "empty"]).setup()
    with pytest.raises(ValueError, match=r"Normal folder contains no images: .*empty"):
        ClassFolders(root, normal_dir="empty", abnormal_dirs="yes").setup()
    with pytest.raises(FileNotFoundError, match=r"Normal folder not found: .*NORMAL \(folders there: empty, no, yes\)"):
        ClassFolders(root, normal_dir="NORMAL").setup()


def test_corrupt_file_is_named_at_setup(make_class_folders: Callable[..., Path]) -> None:
    root = make_class_folders(normal=4, abnormal=2)
    (root / "yes" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)  # JPEG header, no data
    datamodule = ClassFolders(root, normal_dir="no", abnormal_dirs="yes", num_workers=0)
    with pytest.raises(ImageReadError, match=r"(?s)1 file\(s\) cannot be read.*broken\.jpg.*\[test split\]"):
        datamodule.setup()  # found at setup, before training (it used to fail only when the test reached it)
    (root / "no" / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"2 file\(s\)") as error:
        ClassFolders(root, normal_dir="no", abnormal_dirs="yes").setup()
    assert "broken.jpg" in str(error.value)  # one error lists every bad file
    assert "notes.png: file name says image" in str(error.value)


def test_shot_larger_than_available_normals(make_class_folders: Callable[..., Path]) -> None:
    root = make_class_folders(normal=6, abnormal=2)
    with pytest.raises(ShotError, match=r"shot=4 but only 3 training normal image\(s\)"):
        ClassFolders(root, normal_dir="no", shot=4).setup()
    datamodule = ClassFolders(root, normal_dir="no", shot=3, num_workers=0)
    datamodule.setup()  # exactly all: no validation hold-out left, validation reuses the training images
    assert len(datamodule.train_data) == 3
    assert _paths(datamodule.val_data) == _paths(datamodule.train_data)


def test_splits_are_seeded_nested_and_test_set_is_shot_independent(make_class_folders: Callable[..., Path]) -> None:
    root = make_class_folders(normal=20, abnormal=3)

    def split(shot: int | None, seed: int, split_seed: int = 0) -> ClassFolders:
        datamodule = ClassFolders(root, normal_dir="no", shot=shot, seed=seed, split_seed=split_seed, num_workers=0)
        datamodule.setup()
        return datamodule

    one, one_again, five, full = split(1, 0), split(1, 0), split(5, 0), split(None, 0)
    assert _paths(one.train_data) == _paths(one_again.train_data)
    assert _paths(one.train_data) < _paths(five.train_data) < _paths(full.train_data)
    assert _paths(one.test_data) == _paths(five.test_data) == _paths(full.test_data)
    assert _paths(one.val_data) == _paths(full.val_data)
    for datamodule in (one, five, full):
        assert not _paths(datamodule.train_data) & _paths(datamodule.test_data)
    # the seed draws other training normals from the same pool; the split seed makes another test set
    draws = [split(1, seed) for seed in range(1, 6)]
    assert all(_paths(d.test_data) == _paths(one.test_data) for d in draws)
    assert all(_paths(d.val_data) == _paths(one.val_data) for d in draws)
    assert {frozenset(_paths(d.train_data)) for d in draws} != {frozenset(_paths(one.train_data))}
    assert _paths(split(1, 0, split_seed=1).test_data) != _paths(one.test_data)


def test_stratified_validation_moves_test_images_of_both_classes(make_class_folders: Callable[..., Path]) -> None:
    root = make_class_folders(normal=20, abnormal=10)
    plain = ClassFolders(root, normal_dir="no", shot=1, num_workers=0)
    labelled = ClassFolders(root, normal_dir="no", shot=1, num_workers=0, val_split_mode="from_test")
    plain.setup()
    labelled.setup()
    assert sorted(set(_labels(labelled.val_data))) == [0, 1]
    assert _paths(labelled.val_data) | _paths(labelled.test_data) == _paths(plain.test_data)
    assert not _paths(labelled.val_data) & _paths(labelled.test_data)
    assert len(labelled.val_data) == round(0.2 * 10) + round(0.2 * 10)  # 20 % of the test normals and anomalies
    with pytest.raises(ValueError, match="val_split_mode must be"):
        ClassFolders(root, normal_dir="no", val_split_mode="same_as_test")


def test_split_folders_bmad_with_masks_and_valid(make_split_folders: Callable[..., Path]) -> None:
    root = make_split_folders(train=6, test_good=3, test_bad=2, valid=True)
    datamodule = SplitFolders(root, shot=2, num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 2
    assert datamodule.test_data.task.value == "segmentation"
    assert sorted(_labels(datamodule.test_data)) == [0, 0, 0, 1, 1]
    assert sorted(_labels(datamodule.val_data)) == [0, 0, 0, 1, 1]  # BMAD's own valid/ split
    assert all("valid" in p for p in _paths(datamodule.val_data))
    assert all(Path(p).relative_to(root).parts[0] == "test" for p in _paths(datamodule.test_data))
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.gt_mask.shape == (5, 16, 16)
    anomalous = batch.gt_label == 1
    assert int(batch.gt_mask[~anomalous].sum()) == 0
    assert (batch.gt_mask[anomalous].flatten(1).sum(1) == 16).all()


def test_split_folders_few_shot_layout_without_valid(tmp_path: Path) -> None:
    for i in range(5):
        save_png(tmp_path / "train" / "good" / f"{i}.png", gray())
    for i in range(2):
        save_png(tmp_path / "test" / "good" / f"g{i}.png", gray())
        save_png(tmp_path / "test" / "bad" / f"b{i}.png", gray(lesion=True))
    datamodule = SplitFolders(tmp_path, shot=1, num_workers=0)
    datamodule.setup()
    assert datamodule.test_data.task.value == "classification"
    assert sorted(_labels(datamodule.test_data)) == [0, 0, 1, 1]
    assert len(datamodule.train_data) == 1
    assert len(datamodule.val_data) == 1  # round(0.2 * 5) normals held out of train/good
    with pytest.raises(FileNotFoundError, match="Abnormal folder not found"):
        SplitFolders(tmp_path, abnormal_dirs="Ungood").setup()


def test_nifti_volumes_expand_into_slices(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        save_nifti(tmp_path / "train" / "good" / f"n{i}.nii.gz", rng.random((12, 12, 3)).astype(np.float32))
    save_nifti(tmp_path / "test" / "good" / "t.nii.gz", rng.random((12, 12, 2)).astype(np.float32))
    save_nifti(tmp_path / "test" / "Ungood" / "a.nii", (rng.random((12, 12, 2)) + 2).astype(np.float32))
    datamodule = SplitFolders(tmp_path, expand_volumes=True, val_split_ratio=0.0, num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 6
    assert sorted(_labels(datamodule.test_data)) == [0, 0, 1, 1]
    item = datamodule.test_data[0]
    assert "::axis2:" in item.image_path
    assert tuple(item.image.shape) == (3, 12, 12)


def test_assign_splits_rejects_bad_arguments() -> None:
    frame = pd.DataFrame({"image_path": ["a", "b", "c"], "label_index": [0, 0, 1], "split": ["", "", ""]})
    with pytest.raises(ValueError, match="shot must be a positive integer"):
        assign_splits(frame, shot=0)
    with pytest.raises(ValueError, match="ratios must be in"):
        assign_splits(frame, test_split_ratio=1.0)
    out = assign_splits(frame, shot=1, seed=3)
    assert out.groupby("split").size().to_dict() == {"test": 2, "train": 1}
    assert out.attrs["val_is_train"]


def test_mediaanomaly_layouts(tmp_path: Path) -> None:
    # data.json (RSNA, VinCXR, BrainTumor, LAG)
    rsna = tmp_path / "RSNA"
    names = {"train": [f"t{i}.png" for i in range(4)], "normal": ["n0.png", "n1.png"], "abnormal": ["a0.png"]}
    for group, files in names.items():
        for file in files:
            save_png(rsna / "images" / file, gray(lesion=group == "abnormal"))
    content = {"train": {"0": names["train"]}, "test": {"0": names["normal"], "1": names["abnormal"]}}
    (rsna / "data.json").write_text(json.dumps(content))
    datamodule = DataJson(rsna, shot=1, num_workers=0)
    datamodule.setup()
    assert datamodule.name == "RSNA"
    assert len(datamodule.train_data) == 1
    assert len(datamodule.val_data) == 1  # round(0.2 * 4)
    assert sorted(_labels(datamodule.test_data)) == [0, 0, 1]

    # BraTS2021: train/ holds the images directly, test/normal, test/tumor, test/annotation
    brats = tmp_path / "BraTS2021"
    for i in range(3):
        save_png(brats / "train" / f"{i}.png", gray())
    save_png(brats / "test" / "normal" / "n.png", gray())
    save_png(brats / "test" / "tumor" / "t.png", gray(lesion=True))
    save_png(brats / "test" / "annotation" / "t.png", np.full((16, 16), 255, np.uint8))
    datamodule = SplitFolders(brats, train_normal_dir=".", normal_dir="normal", num_workers=0, val_split_ratio=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 3
    assert _labels(datamodule.test_data) == [0, 1]  # annotation/ is a mask folder, not a class

    # ISIC2018 Task 3: one-hot CSVs, separate official train and test folders
    isic = tmp_path / "ISIC2018_Task3"
    for split, count in (("Training", 4), ("Test", 3)):
        rows = ["image,MEL,NV"]
        for i in range(count):
            normal = i % 2 == 0
            save_jpeg(isic / f"ISIC2018_Task3_{split}_Input" / f"ISIC_{split}{i}.jpg", gray(lesion=not normal))
            rows.append(f"ISIC_{split}{i},{0.0 if normal else 1.0},{1.0 if normal else 0.0}")
        csv = isic / f"ISIC2018_Task3_{split}_GroundTruth" / f"ISIC2018_Task3_{split}_GroundTruth.csv"
        csv.parent.mkdir()
        csv.write_text("\n".join(rows) + "\n")
    datamodule = LabelsFile(
        isic,
        image_dir="ISIC2018_Task3_Training_Input",
        labels_file="ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
        test_image_dir="ISIC2018_Task3_Test_Input",
        test_labels_file="ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv",
        id_column="image",
        label_column="NV",
        normal_label=1,
        val_split_ratio=0,
        num_workers=0,
    )
    datamodule.setup()
    assert all("Training" in p for p in _paths(datamodule.train_data))
    assert len(datamodule.train_data) == 2  # training abnormals are never used
    assert all("Test_Input" in p for p in _paths(datamodule.test_data))
    assert sorted(_labels(datamodule.test_data)) == [0, 0, 1]
