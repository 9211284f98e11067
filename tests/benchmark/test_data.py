"""Benchmark data: fixed seeded splits, k-shot draws, readers and the datamodule factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_sir.benchmark.data import (
    FolderSource,
    LabelsCsvSource,
    Sample,
    SplitDataFactory,
    draw_shot,
    resized_copy,
    source_from_config,
    split_samples,
)


def _samples(normal: int, abnormal: int, prefix: str = "") -> list[Sample]:
    return [Sample(Path(f"{prefix}n{i:03d}.png"), 0) for i in range(normal)] + [
        Sample(Path(f"{prefix}a{i:03d}.png"), 1) for i in range(abnormal)
    ]


def test_split_is_disjoint_complete_stratified_and_seeded() -> None:
    samples = _samples(100, 100)
    split = split_samples(samples, split_seed=0, train_fraction=0.5, val_fraction=0.2, name="headct")
    parts = [set(split.train_pool), set(split.val), set(split.test)]
    assert set().union(*parts) == set(samples)
    assert sum(len(p) for p in parts) == len(samples)
    assert all(s.label == 0 for s in split.train_pool)
    assert len(split.train_pool) == 50
    assert sum(s.label for s in split.val) == 20  # 20 % of the abnormals
    assert sum(1 - s.label for s in split.val) == 10  # 20 % of the held-out normals
    assert split == split_samples(list(reversed(samples)), split_seed=0, name="headct")  # order-free
    assert split != split_samples(samples, split_seed=1, name="headct")


def test_shot_draws_depend_on_the_seed_and_stay_in_the_pool() -> None:
    pool = split_samples(_samples(40, 10), split_seed=0).train_pool
    draws = {draw_shot(pool, 1, seed) for seed in range(10)}
    assert len(draws) > 1
    assert all(len(d) == 1 and d[0] in pool for d in draws)
    assert draw_shot(pool, 1, 3) == draw_shot(pool, 1, 3)
    assert draw_shot(pool, None, 3) == tuple(pool)
    with pytest.raises(ValueError, match="shot"):
        draw_shot(pool, 0, 0)


def test_labels_csv_source_reads_headct_layout_with_spaced_header(tmp_path: Path) -> None:
    (tmp_path / "head_ct").mkdir()
    for i in range(3):
        Image.new("RGB", (10, 12)).save(tmp_path / "head_ct" / f"{i:03d}.png")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n2,1\n")
    source = source_from_config({"layout": "labels_csv", "root": str(tmp_path)})
    assert isinstance(source, LabelsCsvSource)
    assert [(s.path.name, s.label) for s in source.samples()] == [("000.png", 1), ("001.png", 0), ("002.png", 1)]
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n7,1\n")
    with pytest.raises(FileNotFoundError, match=r"007\.png"):
        source.samples()


def _folder_dataset(root: Path, normal: int, abnormal: int, size: tuple[int, int]) -> Path:
    for name, count in (("NORMAL", normal), ("PNEUMONIA", abnormal)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", size, color=i).save(root / name / f"{i}.jpeg")
    return root


def test_factory_keeps_test_sets_fixed_and_unions_the_shots(tmp_path: Path) -> None:
    sources = {
        "a": FolderSource(_folder_dataset(tmp_path / "a", 10, 6, (40, 30)), ("NORMAL",), ("PNEUMONIA",)),
        "b": FolderSource(_folder_dataset(tmp_path / "b", 8, 4, (20, 20)), ("NORMAL",), ("PNEUMONIA",)),
    }
    factory = SplitDataFactory(sources, cache_size=16, cache_dir=tmp_path / "cache", eval_batch_size=4)
    one_a = factory(["a"], 1, seed=0).subsets
    full_a = factory(["a"], None, seed=5).subsets
    universal = factory(["a", "b"], 1, seed=0).subsets
    assert one_a["test"] == full_a["test"] == universal["test"][: len(one_a["test"])]
    assert len(one_a["train"]) == 1
    assert len(full_a["train"]) == 5
    assert len(universal["train"]) == 2
    assert one_a["train"][0] in universal["train"]  # universal = union of the specialized draws
    assert not set(universal["train"]) & set(universal["test"])

    datamodule = factory(["a", "b"], 1, seed=0)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert tuple(batch.image.shape[1:]) == (3, 16, 16)  # resized cached copies (RGB)
    assert set(batch.gt_label.tolist()) <= {0, 1}


def test_folder_source_finds_images_by_content_and_matches_masks(tmp_path: Path) -> None:
    """16-bit PNGs and extension-less files are read (windowed, not clipped); masks pair by stem."""
    for folder in ("good", "bad", "masks", "cache"):
        (tmp_path / folder).mkdir()
    ramp = np.tile(np.linspace(0, 4000, 32, dtype=np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "good" / "n0.png")  # 16 bit, far above 255
    Image.new("L", (32, 32), 40).save(tmp_path / "good" / "n1", format="PNG")  # no extension
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    Image.new("L", (32, 32), 90).save(tmp_path / "bad" / "a0.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "masks" / "a0_mask.png")
    source = FolderSource(tmp_path, normal_dirs=("good",), abnormal_dirs=("bad",), mask_dir="masks")
    samples = source.samples()
    assert [(s.path.name, s.label, s.mask.name if s.mask else None) for s in samples] == [
        ("n0.png", 0, None),
        ("n1", 0, None),
        ("a0.png", 1, "a0_mask.png"),
    ]
    copy = np.asarray(Image.open(resized_copy(samples[0].path, tmp_path / "cache", 16)))
    assert copy.shape == (16, 16, 3)
    # 16-bit values scale by the dtype's range: the ramp survives (PIL's RGB conversion clipped it to 255)
    assert copy[:, 0].max() < copy[:, -1].min() <= copy.max() < 255

    (tmp_path / "masks" / "a0_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"No mask in .*masks.*a0\.png"):
        source.samples()


def test_datamodule_factory_builds_the_packages_medical_datamodules(tmp_path: Path) -> None:
    from anomalib_sir.benchmark.data import DatamoduleFactory

    specs = {}
    for name in ("a", "b"):
        root = _folder_dataset(tmp_path / name, 10, 4, (16, 16))
        specs[name] = {"class_path": "anomalib_sir.data.ClassFolders", "init_args": {"root": str(root)}}
    factory = DatamoduleFactory(specs, eval_batch_size=4)
    single = factory(["a"], 1, seed=0)
    single.setup()
    assert len(single.train_data) == 1
    assert single.test_data.has_anomalous
    universal = factory(["a", "b"], 1, seed=0)
    universal.setup()
    assert len(universal.train_data) == 2
