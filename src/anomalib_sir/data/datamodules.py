"""Anomalib datamodules for medical benchmark layouts, with seeded leakage-free k-shot splits.

* :class:`LabelsFile` – image folder + labels CSV (HeadCT).
* :class:`ClassFolders` – normal folder vs abnormal folder(s) (Br35H, BrainMRI, chest X-ray, OCT2017, APTOS).
* :class:`SplitFolders` – ``train/good``, ``test|valid/good``, ``test|valid/<abnormal>`` + masks (BMAD,
  MedIAnomaly, few-shot, MVTec-style).
* :class:`DataJson` – image folder + MedIAnomaly ``data.json`` (RSNA, VinCXR, BrainTumor, LAG).

All three are :class:`~anomalib.data.AnomalibDataModule` subclasses: anomalib's Engine and CLI use them like
``Folder``; their datasets are :class:`~anomalib_sir.data.dataset.SirDataset` (anomalib's dataset class
reading images by content, so 16-bit PNG, extensionless JPEG, DICOM and NIfTI work). Splits follow
:mod:`anomalib_sir.data.splits`: a test set fixed by ``split_seed`` that never contains a training image,
validation by ``val_split_mode`` (a normal-only hold-out of the training pool, or a stratified labelled
hold-out of the test images), and ``shot`` training normals drawn with ``seed``. The chosen
files are logged and written to ``<run dir>/splits/<name>.csv``.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for folder, count in (("NORMAL", 6), ("PNEUMONIA", 3)):
    ...     (root / folder).mkdir()
    ...     for i in range(count):
    ...         Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / folder / f"{i}.jpeg")
    >>> datamodule = ClassFolders(root, normal_dir="NORMAL", shot=1, num_workers=0)
    >>> datamodule.setup()
    >>> len(datamodule.train_data), len(datamodule.val_data), len(datamodule.test_data)
    (1, 1, 6)

"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anomalib.data import AnomalibDataModule
from anomalib.data.utils import LabelName, ValSplitMode
from pandas import DataFrame
from torchvision.transforms.v2 import Transform

from .dataset import SirDataset, check_samples, infer_task
from .layouts import class_folder_samples, data_json_samples, labels_file_samples, split_folder_samples
from .splits import assign_splits, log_split, val_split_mode_of

logger = logging.getLogger(__name__)


class MedicalDataModule(AnomalibDataModule):
    """Base of the layout datamodules: builds the samples frame, splits it, and serves anomalib datasets.

    Subclasses implement :meth:`make_samples` only.

    Args:
        root: dataset folder.
        name: dataset name (results folder, split file, metric-table row); default: the ``root`` folder name.
        shot: training normals (``None``: all).
        test_split_ratio: fraction of normals that become test images when the layout has no split.
        val_split_mode: ``"from_train"``: a normal-only hold-out of the training pool (it only fits score
            normalisation and thresholds); ``"from_test"``: a stratified labelled hold-out of the test images
            (normals and anomalies), for choosing settings on validation AUROC. Never a test image in both.
        val_split_ratio: fraction held out for validation; with ``from_train``, if too few training normals
            remain, validation reuses the training images.
        seed: seed of the k-shot draw (which training normals are used).
        split_seed: seed of the test and validation split (the same for every ``shot`` and ``seed``).
        expand_volumes: one sample per slice of 3-D NIfTI / multi-frame DICOM files.
        slice_axis: slicing axis for ``expand_volumes``.
        train_batch_size, eval_batch_size, num_workers: dataloader settings.
        train_augmentations, val_augmentations, test_augmentations, augmentations: as in anomalib.
        split_dir: folder for ``splits/<name>.csv``; default: the trainer's run folder (none without a trainer).

    """

    def __init__(
        self,
        root: str | Path,
        name: str | None = None,
        shot: int | None = None,
        test_split_ratio: float = 0.5,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TRAIN,
        val_split_ratio: float = 0.2,
        seed: int = 0,
        split_seed: int = 0,
        expand_volumes: bool = False,
        slice_axis: int = 2,
        train_batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        split_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            val_split_mode=val_split_mode_of(val_split_mode),
            seed=seed,
        )
        # set here, not by anomalib (it replaces a ratio of 0 by 0.5)
        self.test_split_ratio = test_split_ratio
        self.val_split_ratio = val_split_ratio
        self.root = Path(root)
        self._name = name or self.root.name
        self.shot = shot
        self.split_seed = split_seed
        self.expand_volumes = expand_volumes
        self.slice_axis = slice_axis
        self.split_dir = split_dir
        self.splits: DataFrame | None = None

    @property
    def name(self) -> str:
        """Dataset name (results folder, split file name, metric-table row)."""
        return self._name

    @abstractmethod
    def make_samples(self) -> DataFrame:
        """Build the samples frame of the whole dataset (see :mod:`anomalib_sir.data.layouts`)."""

    def _record_dir(self) -> Path | None:
        if self.split_dir is not None:
            return Path(self.split_dir)
        trainer = getattr(self, "trainer", None)
        return Path(trainer.default_root_dir) if trainer is not None else None

    def _setup(self, _stage: str | None = None) -> None:
        """Build samples, assign seeded splits, check every file, create the datasets and record the split.

        Raises:
            ImageFilesError: files of the train, validation or test split cannot be read (all listed at once).

        """
        frame = assign_splits(
            self.make_samples(),
            shot=self.shot,
            test_split_ratio=self.test_split_ratio,
            val_split_ratio=self.val_split_ratio,
            seed=self.seed,
            name=self.name,
            split_seed=self.split_seed,
            val_split_mode=self.val_split_mode,
        )
        self.splits = frame
        check_samples(frame, self.name)  # every train/val/test file, from headers: fail before training
        test = frame[frame["split"] == "test"]
        task = infer_task(test)
        train = frame[frame["split"] == "train"]
        val = train if frame.attrs["val_is_train"] else frame[frame["split"] == "val"]
        has_val_anomalies = bool((val["label_index"] == LabelName.ABNORMAL).any())
        self.train_data = SirDataset(train, name=self.name, task=task)
        self.val_data = SirDataset(val, name=self.name, task=infer_task(val) if has_val_anomalies else task)
        self.test_data = SirDataset(test, name=self.name, task=task)
        log_split(frame, self.name, self._record_dir())

    def _create_test_split(self) -> None:
        """No-op: the test split is made in :meth:`_setup` (seeded, independent of ``shot``)."""

    def _create_val_split(self) -> None:
        """No-op: the validation split is made in :meth:`_setup` (never from test images)."""


class LabelsFile(MedicalDataModule):
    """Image folder plus a labels CSV, e.g. HeadCT (``head_ct/NNN.png`` + ``labels.csv``, ``id, hemorrhage``).

    Args:
        root: dataset folder.
        image_dir: image folder relative to ``root``.
        labels_file: CSV file relative to ``root``.
        id_column: column with the image id (file name, or number matching a zero-padded file stem).
        label_column: column with the label.
        normal_label: label value of normal images; every other value is anomalous.
        test_image_dir, test_labels_file: an official test split in its own folder/CSV (ISIC2018 Task 3); then
            ``image_dir``/``labels_file`` give the training normals only and no seeded test split is made.
        **kwargs: :class:`MedicalDataModule` arguments (``name``, ``shot``, ``seed``, ratios, loaders ...).

    Example:
        >>> LabelsFile("../shared/data/headct", shot=1).image_dir
        'head_ct'

    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "head_ct",
        labels_file: str = "labels.csv",
        id_column: str = "id",
        label_column: str = "hemorrhage",
        normal_label: str | int = 0,
        test_image_dir: str | None = None,
        test_labels_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.image_dir = image_dir
        self.labels_file = labels_file
        self.id_column = id_column
        self.label_column = label_column
        self.normal_label = normal_label
        self.test_image_dir = test_image_dir
        self.test_labels_file = test_labels_file

    def _read(self, image_dir: str, labels_file: str, require_both_classes: bool) -> DataFrame:
        return labels_file_samples(
            self.root,
            image_dir=image_dir,
            labels_file=labels_file,
            id_column=self.id_column,
            label_column=self.label_column,
            normal_label=self.normal_label,
            expand_volumes=self.expand_volumes,
            slice_axis=self.slice_axis,
            require_both_classes=require_both_classes,
        )

    def make_samples(self) -> DataFrame:
        """Build samples from the labels file(s) (see :func:`~anomalib_sir.data.layouts.labels_file_samples`)."""
        if self.test_image_dir is None and self.test_labels_file is None:
            return self._read(self.image_dir, self.labels_file, require_both_classes=True)
        train = self._read(self.image_dir, self.labels_file, require_both_classes=False)
        train = train[train["label_index"] == LabelName.NORMAL].assign(split="train")
        test_files = (self.test_image_dir or self.image_dir, self.test_labels_file or self.labels_file)
        test = self._read(*test_files, require_both_classes=True).assign(split="test")
        return pd.concat([train, test], ignore_index=True)


class ClassFolders(MedicalDataModule):
    """A normal class folder and abnormal class folder(s), no split (Br35H ``no``/``yes``, chest X-ray, OCT2017).

    Args:
        root: folder holding the class folders.
        normal_dir: normal folder name.
        abnormal_dirs: abnormal folder name(s); ``None``: every other sub-folder of ``root``.
        mask_dir: optional mask folder relative to ``root`` (per class sub-folders, or flat).
        **kwargs: :class:`MedicalDataModule` arguments (``name``, ``shot``, ``seed``, ratios, loaders ...).

    Example:
        >>> ClassFolders("../shared/data/chest_xray/train", abnormal_dirs="PNEUMONIA").abnormal_dirs
        'PNEUMONIA'

    """

    def __init__(
        self,
        root: str | Path,
        normal_dir: str = "NORMAL",
        abnormal_dirs: str | Sequence[str] | None = None,
        mask_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.normal_dir = normal_dir
        self.abnormal_dirs = abnormal_dirs
        self.mask_dir = mask_dir

    def make_samples(self) -> DataFrame:
        """Build samples from the class folders (see :func:`~anomalib_sir.data.layouts.class_folder_samples`)."""
        return class_folder_samples(
            self.root,
            normal_dir=self.normal_dir,
            abnormal_dirs=self.abnormal_dirs,
            mask_dir=self.mask_dir,
            expand_volumes=self.expand_volumes,
            slice_axis=self.slice_axis,
        )


class SplitFolders(MedicalDataModule):
    """Split folders ``train/<normal>``, ``test/<normal>``, ``test/<abnormal>`` (+ ``valid/``, masks).

    BMAD, MedIAnomaly, the few-shot ``train/good test/good test/bad`` layout and MVTec-style
    ``ground_truth/`` masks. The layout fixes the test set (``test_split_ratio`` is unused); a ``valid/``
    folder (BMAD) is the validation set, otherwise a normal-only hold-out of ``train`` is used.

    Args:
        root: dataset folder.
        train_dir, test_dir, val_dir: split folder names (``None``: auto-detect, see
            :func:`~anomalib_sir.data.layouts.split_folder_samples`; ``val_dir=""``: no validation folder).
        normal_dir: normal class folder name in every split.
        abnormal_dirs: abnormal class folder name(s); ``None``: every other folder of the split.
        mask_dir: optional extra mask folder relative to ``root``.
        train_normal_dir: normal folder inside ``train_dir`` if different (``"."``: ``train_dir`` itself).
        **kwargs: :class:`MedicalDataModule` arguments (``name``, ``shot``, ``seed``, ratios, loaders ...).

    Example:
        >>> SplitFolders("BMAD/Brain", normal_dir="good").name
        'Brain'

    """

    def __init__(
        self,
        root: str | Path,
        train_dir: str = "train",
        test_dir: str | None = None,
        val_dir: str | None = None,
        normal_dir: str = "good",
        abnormal_dirs: str | Sequence[str] | None = None,
        mask_dir: str | None = None,
        train_normal_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.train_dir = train_dir
        self.test_dir = test_dir
        self.val_dir = val_dir
        self.normal_dir = normal_dir
        self.abnormal_dirs = abnormal_dirs
        self.mask_dir = mask_dir
        self.train_normal_dir = train_normal_dir

    def make_samples(self) -> DataFrame:
        """Build samples from the split folders (see :func:`~anomalib_sir.data.layouts.split_folder_samples`)."""
        return split_folder_samples(
            self.root,
            train_dir=self.train_dir,
            test_dir=self.test_dir,
            val_dir=self.val_dir,
            normal_dir=self.normal_dir,
            abnormal_dirs=self.abnormal_dirs,
            mask_dir=self.mask_dir,
            expand_volumes=self.expand_volumes,
            slice_axis=self.slice_axis,
            train_normal_dir=self.train_normal_dir,
        )


class DataJson(MedicalDataModule):
    """Image folder plus MedIAnomaly's ``data.json`` split file (RSNA, VinCXR, BrainTumor, LAG).

    The JSON fixes training normals and the test set; validation is a seeded normal hold-out of the training
    normals (``val_split_ratio``), as for the other layouts.

    Args:
        root: dataset folder (holding ``images/`` and ``data.json``).
        json_file: split file relative to ``root``.
        image_dir: image folder relative to ``root``.
        normal_key, abnormal_key: label keys in the JSON.
        **kwargs: :class:`MedicalDataModule` arguments (``name``, ``shot``, ``seed``, ratios, loaders ...).

    Example:
        >>> DataJson("MedIAnomaly-Data/RSNA").name
        'RSNA'

    """

    def __init__(
        self,
        root: str | Path,
        json_file: str = "data.json",
        image_dir: str = "images",
        normal_key: str = "0",
        abnormal_key: str = "1",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.json_file = json_file
        self.image_dir = image_dir
        self.normal_key = normal_key
        self.abnormal_key = abnormal_key

    def make_samples(self) -> DataFrame:
        """Build samples from the JSON split (see :func:`~anomalib_sir.data.layouts.data_json_samples`)."""
        return data_json_samples(
            self.root,
            json_file=self.json_file,
            image_dir=self.image_dir,
            normal_key=self.normal_key,
            abnormal_key=self.abnormal_key,
        )
