"""Benchmark data: dataset readers, seeded splits, k-shot draws and the datamodule factory.

Every model in a benchmark run sees exactly the same images. For each dataset:

1. its normal images are split 50/50 (``train_fraction``) into a **train pool** and held-out normals,
   with a fixed ``split_seed`` (the same test set for every model, setting, shot and seed);
2. the held-out normals and *all* abnormal images are split, stratified by label, into a **validation**
   part (``val_fraction``; used only to fit anomalib's adaptive F1 threshold) and the **test** part that
   every metric is computed on;
3. a k-shot training set is drawn from the train pool with the run's ``seed`` (``shot=None``: the whole
   pool). The universal setting trains on the union of the per-dataset draws, so the universal and the
   specialized models of a seed see the same normals.

The harness talks to data through one callable, :class:`DataFactory`:
``factory(datasets, shot, seed) -> AnomalibDataModule`` whose train set holds the k-shot normals of every
dataset named and whose val/test sets hold their validation/test images. :class:`SplitDataFactory`
implements it over the readers here (labels-CSV, two-class folders, anomalib ``Folder`` layout); any other
callable with that signature (for example the package's medical datamodules) can be named in the
benchmark config instead.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from anomalib_sir.data.demo import generate_demo_dataset
    >>> root = generate_demo_dataset(Path(tempfile.mkdtemp()), image_size=32, num_train=6,
    ...                              num_test_normal=4, num_test_abnormal=4)
    >>> factory = SplitDataFactory({"demo": FolderSource(root, normal_dirs=("train/good", "test/good"),
    ...                                                  abnormal_dirs=("test/lesion",),
    ...                                                  mask_dir="ground_truth/lesion")})
    >>> datamodule = factory(["demo"], shot=1, seed=0)
    >>> datamodule.setup()
    >>> len(datamodule.train_data), len(datamodule.val_data) + len(datamodule.test_data)
    (1, 9)

"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from anomalib import TaskType
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, TestSplitMode, ValSplitMode
from PIL import Image

from anomalib_sir.data.io import list_images, read_image
from anomalib_sir.data.layouts import match_masks


@dataclass(frozen=True)
class Sample:
    """One image: path, label (0 normal, 1 abnormal) and optional mask path."""

    path: Path
    label: int
    mask: Path | None = None


@dataclass(frozen=True)
class LabelsCsvSource:
    r"""Images in one folder with a CSV of ``id, label`` rows (HeadCT: ``id, hemorrhage``).

    Args:
        root: dataset folder.
        image_dir: folder of images, relative to ``root``.
        csv_file: labels CSV, relative to ``root`` (header names are stripped of spaces).
        id_column, label_column: CSV columns; label ``0`` = normal, anything else = abnormal.
        pattern: file name of an id (``{id:03d}.png`` for HeadCT's zero-padded numbers).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp()); (root / "img").mkdir()
        >>> for i in range(2): Image.new("RGB", (4, 4)).save(root / "img" / f"{i:03d}.png")
        >>> _ = (root / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n")
        >>> [(s.path.name, s.label) for s in LabelsCsvSource(root, "img", "labels.csv").samples()]
        [('000.png', 1), ('001.png', 0)]

    """

    root: Path
    image_dir: str = "head_ct"
    csv_file: str = "labels.csv"
    id_column: str = "id"
    label_column: str = "hemorrhage"
    pattern: str = "{id:03d}.png"

    def samples(self) -> list[Sample]:
        """Read the CSV; every listed image must exist."""
        root = Path(self.root)
        with (root / self.csv_file).open(newline="") as handle:
            rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(handle)]
        out = []
        for row in rows:
            path = root / self.image_dir / self.pattern.format(id=int(row[self.id_column]))
            if not path.is_file():
                msg = f"{self.csv_file} lists id {row[self.id_column]} but {path} does not exist"
                raise FileNotFoundError(msg)
            out.append(Sample(path, int(float(row[self.label_column]) != 0)))
        return out


@dataclass(frozen=True)
class FolderSource:
    """Normal and abnormal images in separate folders (two-class folders or anomalib ``Folder`` layout).

    Args:
        root: dataset folder.
        normal_dirs: folders of normal images, relative to ``root`` (all of them are pooled).
        abnormal_dirs: folders of abnormal images.
        mask_dir: optional folder of masks for abnormal images, named like their image (``<stem>.png``,
            ``<stem>_mask.png``, ...; see :func:`anomalib_sir.data.layouts.match_masks`).

    Images are found by content in each folder (not its sub-folders), in any format
    :func:`anomalib_sir.data.io.read_image` reads (PNG, JPEG, TIFF, DICOM, 2-D NIfTI, ...).

    """

    root: Path
    normal_dirs: Sequence[str] = ("train/NORMAL",)
    abnormal_dirs: Sequence[str] = ("train/PNEUMONIA",)
    mask_dir: str | None = None

    def _masks(self, images: Sequence[Path]) -> list[Path | None]:
        if self.mask_dir is None:
            return [None] * len(images)
        folder = Path(self.root) / self.mask_dir
        masks = match_masks([str(p) for p in images], list_images(folder, recursive=False))
        missing = [str(image) for image, mask in zip(images, masks, strict=True) if not mask]
        if missing:
            msg = f"No mask in {folder} for {len(missing)} abnormal image(s), e.g. {missing[:3]}"
            raise FileNotFoundError(msg)
        return [Path(mask) for mask in masks]

    def samples(self) -> list[Sample]:
        """List every image of the normal and abnormal folders."""
        root = Path(self.root)
        normals = [Sample(Path(p), 0) for d in self.normal_dirs for p in list_images(root / d, recursive=False)]
        abnormal_images = [Path(p) for d in self.abnormal_dirs for p in list_images(root / d, recursive=False)]
        masks = self._masks(abnormal_images)
        return normals + [Sample(p, 1, m) for p, m in zip(abnormal_images, masks, strict=True)]


class SampleSource(Protocol):
    """Anything that lists a dataset's labelled images."""

    def samples(self) -> list[Sample]:
        """Return every image of the dataset with its label."""
        ...


def demo_source(root: Path, **settings: Any) -> FolderSource:
    """Generate (once) the package's offline demo dataset under ``root`` and return its reader.

    ``settings`` are those of :class:`anomalib_sir.data.demo.SirDemo` (``source``, ``image_size``,
    ``num_train``, ``num_test_normal``, ``num_test_abnormal``, ``seed``). Its ``train/good`` and ``test/good``
    folders are pooled as normals, so the benchmark's own split applies.
    """
    from anomalib_sir.data.demo import SirDemo

    demo = SirDemo(root=root, **settings)
    demo.prepare_data()
    return FolderSource(
        demo.dataset_dir,
        normal_dirs=("train/good", "test/good"),
        abnormal_dirs=("test/lesion",),
        mask_dir="ground_truth/lesion",
    )


def source_from_config(spec: Mapping[str, Any], data_root: Path | None = None) -> SampleSource:
    """Build a reader from a config mapping with a ``layout`` key (``labels_csv``, ``folder`` or ``demo``).

    Example:
        >>> source_from_config({"layout": "folder", "root": "cxr", "normal_dirs": ["train/NORMAL"],
        ...                     "abnormal_dirs": ["train/PNEUMONIA"]}, Path("/data")).root
        PosixPath('/data/cxr')

    """
    spec = dict(spec)
    layout = spec.pop("layout")
    root = Path(os.path.expandvars(str(spec.pop("root")))).expanduser()
    if data_root is not None and not root.is_absolute():
        root = data_root / root
    if layout == "labels_csv":
        return LabelsCsvSource(root=root, **spec)
    if layout == "folder":
        for key in ("normal_dirs", "abnormal_dirs"):
            if key in spec:
                spec[key] = tuple(spec[key])
        return FolderSource(root=root, **spec)
    if layout == "demo":
        return demo_source(root, **spec)
    msg = f"Unknown dataset layout {layout!r}; expected 'labels_csv', 'folder' or 'demo'."
    raise ValueError(msg)


@dataclass(frozen=True)
class DatasetSplit:
    """A dataset's fixed split: train pool (normals), validation and test (normals + abnormals)."""

    train_pool: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]


def _seed_for(seed: int, *names: str) -> int:
    """Return a reproducible integer seed for (seed, names), independent of Python's hash randomisation."""
    digest = hashlib.sha256(json.dumps([seed, *names]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_samples(
    samples: Sequence[Sample],
    split_seed: int = 0,
    train_fraction: float = 0.5,
    val_fraction: float = 0.2,
    name: str = "",
) -> DatasetSplit:
    """Seeded split: ``train_fraction`` of the normals -> train pool; the rest + abnormals -> val/test.

    The validation part is stratified (``val_fraction`` of the held-out normals and of the abnormals).

    Example:
        >>> samples = [Sample(Path(f"n{i}.png"), 0) for i in range(10)] + [
        ...     Sample(Path(f"a{i}.png"), 1) for i in range(10)]
        >>> split = split_samples(samples, split_seed=0)
        >>> len(split.train_pool), len(split.val), len(split.test)
        (5, 3, 12)
        >>> {s.label for s in split.train_pool}
        {0}

    """
    if not 0 < train_fraction < 1 or not 0 <= val_fraction < 1:
        msg = f"Need 0 < train_fraction < 1 and 0 <= val_fraction < 1, got {train_fraction}, {val_fraction}"
        raise ValueError(msg)
    rng = np.random.default_rng(_seed_for(split_seed, "split", name))
    ordered = sorted(samples, key=lambda s: str(s.path))
    normals = [s for s in ordered if s.label == 0]
    abnormals = [s for s in ordered if s.label == 1]
    if len(normals) < 2 or not abnormals:
        msg = f"Dataset {name!r} needs >= 2 normal and >= 1 abnormal images ({len(normals)}, {len(abnormals)})"
        raise ValueError(msg)
    normals = [normals[i] for i in rng.permutation(len(normals))]
    abnormals = [abnormals[i] for i in rng.permutation(len(abnormals))]
    n_train = min(max(1, round(train_fraction * len(normals))), len(normals) - 1)
    train_pool, held_out = normals[:n_train], normals[n_train:]
    n_val_normal = round(val_fraction * len(held_out))
    n_val_abnormal = round(val_fraction * len(abnormals))
    val = held_out[:n_val_normal] + abnormals[:n_val_abnormal]
    test = held_out[n_val_normal:] + abnormals[n_val_abnormal:]
    return DatasetSplit(tuple(train_pool), tuple(val), tuple(test))


def draw_shot(pool: Sequence[Sample], shot: int | None, seed: int, name: str = "") -> tuple[Sample, ...]:
    """Draw ``shot`` normals from the pool with ``seed`` (``None``: the whole pool, in order).

    Example:
        >>> pool = [Sample(Path(f"n{i}.png"), 0) for i in range(5)]
        >>> draw_shot(pool, 1, seed=0) == draw_shot(pool, 1, seed=0)
        True
        >>> len(draw_shot(pool, None, seed=3))
        5

    """
    if shot is None or shot >= len(pool):
        return tuple(pool)
    if shot < 1:
        msg = f"shot must be >= 1 or None (all), got {shot}"
        raise ValueError(msg)
    rng = np.random.default_rng(_seed_for(seed, "shot", name))
    return tuple(pool[i] for i in sorted(rng.choice(len(pool), size=shot, replace=False)))


def _frame(samples: Iterable[Sample], split: str, task: TaskType) -> pd.DataFrame:
    rows = [
        {
            "image_path": str(s.path),
            "label": "abnormal" if s.label else "normal",
            "label_index": LabelName.ABNORMAL if s.label else LabelName.NORMAL,
            "mask_path": str(s.mask) if s.mask is not None else "",
            "split": split,
        }
        for s in samples
    ]
    frame = pd.DataFrame(rows, columns=["image_path", "label", "label_index", "mask_path", "split"])
    frame.attrs["task"] = task
    return frame


class SampleListDataset(AnomalibDataset):
    """An anomalib dataset over an explicit list of samples.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> path = Path(tempfile.mkdtemp()) / "a.png"; Image.new("RGB", (8, 8)).save(path)
        >>> dataset = SampleListDataset([Sample(path, 0)], split="train")
        >>> dataset[0].image.shape, dataset.task
        (torch.Size([3, 8, 8]), <TaskType.CLASSIFICATION: 'classification'>)

    """

    def __init__(self, samples: Sequence[Sample], split: str, task: TaskType | None = None) -> None:
        super().__init__()
        if task is None:
            task = TaskType.SEGMENTATION if any(s.mask is not None for s in samples) else TaskType.CLASSIFICATION
        self.samples = _frame(samples, split, task)


class SplitDataModule(AnomalibDataModule):
    """anomalib datamodule over fixed train/val/test sample lists (no further splitting).

    Args:
        train, val, test: samples of each subset.
        name: datamodule name (shown by anomalib).
        train_batch_size, eval_batch_size, num_workers: dataloader settings.
        seed: seed passed to anomalib (unused for splitting: the subsets are fixed).

    """

    def __init__(
        self,
        train: Sequence[Sample],
        val: Sequence[Sample],
        test: Sequence[Sample],
        name: str = "benchmark",
        train_batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=ValSplitMode.FROM_DIR,
            seed=seed,
        )
        self._name = name
        self.category = name
        self._subsets = {"train": tuple(train), "val": tuple(val), "test": tuple(test)}
        has_masks = any(s.mask is not None for s in (*val, *test))
        self._task = TaskType.SEGMENTATION if has_masks else TaskType.CLASSIFICATION

    @property
    def name(self) -> str:
        """Name of the datamodule (the datasets it covers)."""
        return self._name

    @property
    def subsets(self) -> dict[str, tuple[Sample, ...]]:
        """The fixed train/val/test sample lists."""
        return self._subsets

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = SampleListDataset(self._subsets["train"], "train", self._task)
        self.val_data = SampleListDataset(self._subsets["val"], "val", self._task)
        self.test_data = SampleListDataset(self._subsets["test"], "test", self._task)


class DataFactory(Protocol):
    """Makes the datamodule of a benchmark cell: k-shot normals of ``datasets`` (union) for ``seed``.

    The val/test subsets must not depend on ``shot`` or ``seed`` (the test set is fixed per dataset).
    """

    def __call__(self, datasets: Sequence[str], shot: int | None, seed: int) -> AnomalibDataModule:
        """Return the datamodule (train: k-shot normals of every dataset; val/test: theirs)."""
        ...


def resized_copy(sample_path: Path, cache_dir: Path, size: int) -> Path:
    """Resize ``sample_path`` to ``size`` x ``size`` once (8-bit RGB PNG in ``cache_dir``); return the copy.

    The image is read by :func:`anomalib_sir.data.io.read_image` (any supported format, windowed to [0, 1]).
    """
    digest = hashlib.sha1(f"{sample_path.resolve()}|{size}".encode()).hexdigest()[:16]
    target = cache_dir / f"{sample_path.stem}-{digest}.png"
    if not target.is_file():
        pixels = np.round(read_image(sample_path) * 255.0).astype(np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
        tmp = target.with_suffix(f".{os.getpid()}.tmp.png")
        image.save(tmp)
        os.replace(tmp, target)
    return target


@dataclass
class SplitDataFactory:
    """:class:`DataFactory` over :class:`SampleSource` readers with :func:`split_samples`/:func:`draw_shot`.

    Args:
        sources: dataset name -> reader.
        split_seed, train_fraction, val_fraction: the fixed split (see :func:`split_samples`).
        cache_size: when set, images are resized once to ``cache_size`` x ``cache_size`` PNGs in
            ``cache_dir`` (masks are not cached) so large originals are not decoded in every run;
            use the benchmark's image size (the models resize to it anyway).
        cache_dir: where resized copies live (shared between runs).
        train_batch_size, eval_batch_size, num_workers: dataloader settings.

    """

    sources: Mapping[str, SampleSource]
    split_seed: int = 0
    train_fraction: float = 0.5
    val_fraction: float = 0.2
    cache_size: int | None = None
    cache_dir: Path | None = None
    train_batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0
    _splits: dict[str, DatasetSplit] = field(default_factory=dict, init=False, repr=False)

    def _cached(self, sample: Sample) -> Sample:
        if self.cache_size is None or self.cache_dir is None or sample.mask is not None:
            return sample
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return Sample(resized_copy(sample.path, self.cache_dir, self.cache_size), sample.label, sample.mask)

    def split(self, name: str) -> DatasetSplit:
        """Return the fixed split of dataset ``name`` (computed once)."""
        if name not in self.sources:
            msg = f"Unknown dataset {name!r}; configured: {sorted(self.sources)}"
            raise KeyError(msg)
        if name not in self._splits:
            split = split_samples(
                self.sources[name].samples(),
                self.split_seed,
                self.train_fraction,
                self.val_fraction,
                name=name,
            )
            self._splits[name] = DatasetSplit(
                *(tuple(self._cached(s) for s in part) for part in (split.train_pool, split.val, split.test))
            )
        return self._splits[name]

    def __call__(self, datasets: Sequence[str], shot: int | None, seed: int) -> SplitDataModule:
        """Datamodule with the k-shot normals of each dataset (union) and their val/test images."""
        train: list[Sample] = []
        val: list[Sample] = []
        test: list[Sample] = []
        for name in datasets:
            split = self.split(name)
            train += draw_shot(split.train_pool, shot, seed, name=name)
            val += split.val
            test += split.test
        return SplitDataModule(
            train,
            val,
            test,
            name="+".join(datasets),
            train_batch_size=self.train_batch_size,
            eval_batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            seed=seed,
        )


@dataclass
class DatamoduleFactory:
    """:class:`DataFactory` over existing anomalib datamodule classes that take ``shot`` and ``seed``.

    Use it to run the grid on the package's medical datamodules (``anomalib_sir.data.LabelsFile``,
    ``ClassFolders``, ``SplitFolders``) instead of the built-in :class:`SplitDataFactory`. Each dataset is
    ``{"class_path": ..., "init_args": {...}}``; a cell's datamodule is that class built with the cell's
    ``shot`` and ``seed`` (and ``name``), and several datasets are wrapped in
    ``anomalib_sir.data.UniversalDataModule``. Their split rules then apply (see
    :mod:`anomalib_sir.data.splits`: the seed also draws the test split, validation is normal-only, so the
    adaptive threshold falls back to the highest normal validation score).

    Config::

        data_factory: anomalib_sir.benchmark.data.DatamoduleFactory
        datasets:
          headct: {class_path: anomalib_sir.data.LabelsFile, init_args: {root: ../shared/data/headct}}
          chest_xray:
            class_path: anomalib_sir.data.ClassFolders
            init_args: {root: ../shared/data/chest_xray/train, abnormal_dirs: PNEUMONIA}

    Args:
        datasets: dataset name -> ``{"class_path", "init_args"}``.
        train_batch_size, eval_batch_size, num_workers: dataloader settings passed to every datamodule.

    """

    datasets: Mapping[str, Mapping[str, Any]]
    train_batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0

    def _member(self, name: str, shot: int | None, seed: int) -> AnomalibDataModule:
        import importlib

        spec = self.datasets[name]
        module_name, _, class_name = str(spec["class_path"]).replace(":", ".").rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        kwargs = {
            "name": name,
            "train_batch_size": self.train_batch_size,
            "eval_batch_size": self.eval_batch_size,
            "num_workers": self.num_workers,
            **dict(spec.get("init_args") or {}),
            "shot": shot,
            "seed": seed,
        }
        return cls(**kwargs)

    def __call__(self, datasets: Sequence[str], shot: int | None, seed: int) -> AnomalibDataModule:
        """One member datamodule, or a ``UniversalDataModule`` over several."""
        if len(datasets) == 1:
            return self._member(datasets[0], shot, seed)
        from anomalib_sir.data import UniversalDataModule

        return UniversalDataModule(
            [self._member(name, None, seed) for name in datasets],
            shot=shot,
            seed=seed,
            train_batch_size=self.train_batch_size,
            eval_batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
        )
