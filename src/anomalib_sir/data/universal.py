"""Universal setting: one model trained on the union of several datasets' normals, tested per dataset.

:class:`UniversalDataModule` takes member datamodules (this package's :class:`~anomalib_sir.data.LabelsFile`,
:class:`~anomalib_sir.data.ClassFolders`, :class:`~anomalib_sir.data.SplitFolders`, or any anomalib image
datamodule such as ``BMAD`` or ``Folder``), sets each one up with its own seeded split, and then

* trains on the **union** of the members' training images (optionally ``shot`` per member);
* validates and tests each member **separately**: the validation and test loaders run over all members'
  images, and :meth:`UniversalDataModule.dataset_index` tells which member each image belongs to, so the
  post-processor fits its statistics per dataset and
  :class:`~anomalib_sir.data.evaluation.PerDatasetEvaluator` reports one row per dataset plus their mean.
  (One loader rather than one per member: anomalib's pre-processor does not accept the ``dataloader_idx``
  that Lightning passes with several loaders.)

Images of anomalib members are read through :class:`~anomalib_sir.data.dataset.SirDataset` too.

Example (YAML, as used by ``anomalib train --config``)::

    data:
      class_path: anomalib_sir.data.UniversalDataModule
      init_args:
        shot: 1
        members:
          - class_path: anomalib_sir.data.LabelsFile
            init_args: {root: ../shared/data/headct, name: headct}
          - class_path: anomalib_sir.data.ClassFolders
            init_args: {root: ../shared/data/chest_xray/train, name: chest_xray, abnormal_dirs: PNEUMONIA}

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from anomalib_sir.data import ClassFolders
    >>> members = []
    >>> for name in ("a", "b"):
    ...     root = Path(tempfile.mkdtemp())
    ...     for folder, count in (("NORMAL", 6), ("ILL", 2)):
    ...         (root / folder).mkdir()
    ...         for i in range(count):
    ...             Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / folder / f"{i}.png")
    ...     members.append(ClassFolders(root, name=name))
    >>> universal = UniversalDataModule(members, shot=1, num_workers=0)
    >>> universal.setup()
    >>> len(universal.train_data), universal.dataset_names, [len(d) for d in universal.test_datasets]
    (2, ['a', 'b'], [5, 5])
    >>> universal.dataset_index(universal.test_data.samples["image_path"]).bincount().tolist()
    [5, 5]

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anomalib.data import AnomalibDataModule
from torchvision.transforms.v2 import Transform

from .datamodules import MedicalDataModule
from .dataset import SirDataset, check_samples
from .splits import ShotError, log_split

logger = logging.getLogger(__name__)


def _unique_names(names: Sequence[str]) -> list[str]:
    """Make names unique by appending ``_2``, ``_3`` ... to repeats.

    Example:
        >>> _unique_names(["a", "b", "a"])
        ['a', 'b', 'a_2']

    """
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


class UniversalDataModule(AnomalibDataModule):
    """Union of member datamodules for training; validation and test per member.

    Args:
        members: member datamodules (each keeps its own root, layout, seed and ratios).
        shot: if given, overrides ``shot`` of every member (anomalib members: a seeded subsample of their
            training set), e.g. ``1`` for the one-shot universal setting; ``None`` keeps the members' own.
        name: name of the union (results folder).
        seed: seed for subsampling anomalib members' training sets.
        train_batch_size, eval_batch_size, num_workers: dataloader settings for all members.
        train_augmentations, val_augmentations, test_augmentations, augmentations: as in anomalib, applied to
            every member (the members' own augmentations are not used).
        split_dir: folder for ``splits/<member>.csv``; default: the trainer's run folder.

    """

    def __init__(
        self,
        members: Sequence[AnomalibDataModule],
        shot: int | None = None,
        name: str = "universal",
        seed: int = 0,
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
            seed=seed,
        )
        if not members:
            msg = "UniversalDataModule needs at least one member datamodule"
            raise ValueError(msg)
        self.members = list(members)
        self.shot = shot
        self._name = name
        self.split_dir = split_dir
        self.dataset_names = _unique_names([self._member_name(m) for m in self.members])
        self.val_datasets: list[SirDataset] = []
        self.test_datasets: list[SirDataset] = []

    @property
    def name(self) -> str:
        """Name of the union."""
        return self._name

    @staticmethod
    def _member_name(member: AnomalibDataModule) -> str:
        category = getattr(member, "category", "")
        return f"{member.name}_{category}" if category and not isinstance(member, MedicalDataModule) else member.name

    def _record_dir(self) -> Path | None:
        if self.split_dir is not None:
            return Path(self.split_dir)
        trainer = getattr(self, "trainer", None)
        return Path(trainer.default_root_dir) if trainer is not None else None

    def _member_datasets(self, member: AnomalibDataModule, name: str) -> tuple[SirDataset, SirDataset, SirDataset]:
        """Set a member up and return its (train, val, test) datasets as :class:`SirDataset`."""
        if isinstance(member, MedicalDataModule):
            if self.shot is not None:
                member.shot = self.shot
            member._name = name
            member.split_dir = self._record_dir()
            member.setup()
            return member.train_data, member.val_data, member.test_data
        member.setup()
        train = SirDataset.from_dataset(member.train_data, name=name)
        if self.shot is not None:
            if self.shot > len(train):
                msg = f"{name}: shot={self.shot} but only {len(train)} training image(s) are available"
                raise ShotError(msg)
            chosen = np.random.default_rng([self.seed or 0, 2]).permutation(len(train))[: self.shot]
            train = train.with_samples(train.samples.iloc[np.sort(chosen)])
        val_source = getattr(member, "val_data", None)
        val = SirDataset.from_dataset(val_source, name=name) if val_source is not None else train
        test = SirDataset.from_dataset(member.test_data, name=name)
        record = pd.concat(
            [d.samples.assign(split=split) for d, split in ((train, "train"), (val, "val"), (test, "test"))],
            ignore_index=True,
        )
        check_samples(record, name)  # anomalib members too: every file is checked before training
        log_split(record, name, self._record_dir())
        return train, val, test

    def _setup(self, _stage: str | None = None) -> None:
        """Set up every member, then build the union training set and the tagged eval sets."""
        trains, vals, tests = [], [], []
        for member, name in zip(self.members, self.dataset_names, strict=True):
            train, val, test = self._member_datasets(member, name)
            trains.append(train)
            vals.append(val)
            tests.append(test)
        self._index_paths([trains, vals, tests])
        self.train_data = self._union(trains, "classification")
        self.val_datasets, self.test_datasets = vals, tests
        self.val_data = self._union(vals)
        self.test_data = self._union(tests)
        counts = {name: len(train) for name, train in zip(self.dataset_names, trains, strict=True)}
        logger.info("Universal training set: %d images %s", len(self.train_data), counts)

    def _index_paths(self, groups: list[list[SirDataset]]) -> None:
        """Map every image path to its member; an image shared by two members is an error."""
        index: dict[str, int] = {}
        for group in groups:
            for member_idx, dataset in enumerate(group):
                for path in dataset.samples["image_path"]:
                    previous = index.setdefault(str(path), member_idx)
                    if previous != member_idx:
                        names = self.dataset_names[previous], self.dataset_names[member_idx]
                        msg = f"Image {path} belongs to two member datasets {names}; members must not overlap"
                        raise ValueError(msg)
        self._path_index = index

    def _union(self, datasets: list[SirDataset], task: str | None = None) -> SirDataset:
        """One dataset over several members' samples (classification if any member is)."""
        frames = [d.samples.assign(dataset=n) for d, n in zip(datasets, self.dataset_names, strict=True)]
        tasks = {d.task.value for d in datasets}
        if task is None:
            task = "segmentation" if tasks == {"segmentation"} else "classification"
            if len(tasks) > 1:
                logger.warning("Members mix segmentation and classification: pixel metrics are not computed")
        return SirDataset(pd.concat(frames, ignore_index=True), name=self.name, task=task)

    def dataset_index(self, image_paths: Sequence[str]) -> torch.Tensor:
        """Member index of each image path (``-1``: not an image of any member).

        The post-processor and :class:`~anomalib_sir.data.evaluation.PerDatasetEvaluator` use it to treat
        each member separately inside the single validation/test loader.
        """
        index = getattr(self, "_path_index", {})
        return torch.tensor([index.get(str(path), -1) for path in image_paths], dtype=torch.long)

    def _create_test_split(self) -> None:
        """No-op: every member made its own test split."""

    def _create_val_split(self) -> None:
        """No-op: every member made its own validation split."""
