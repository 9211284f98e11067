"""An anomalib dataset that reads every image through :mod:`anomalib_sir.data.io`.

:class:`SirDataset` is anomalib's :class:`~anomalib.data.datasets.base.image.AnomalibDataset` (same samples
DataFrame, splitting, concatenation and collate function) with two changes:

* images and masks are read by content with :func:`~anomalib_sir.data.io.read_image` /
  :func:`~anomalib_sir.data.io.read_mask`, so 16-bit PNGs, extensionless JPEGs, DICOM and NIfTI work;
* ``image_path`` may be a volume slice reference (``"brain.nii.gz::axis2:0040"``).

Example:
    >>> import numpy as np, pandas as pd, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(folder / "a.png")
    >>> samples = pd.DataFrame({"image_path": [str(folder / "a.png")], "label_index": [0],
    ...                         "mask_path": [""], "split": ["train"]})
    >>> item = SirDataset(samples, name="demo")[0]
    >>> tuple(item.image.shape), item.image.dtype, int(item.gt_label)
    ((3, 8, 8), torch.float32, 0)

"""

from __future__ import annotations

import copy

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data.dataclasses import DatasetItem, ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName
from pandas import DataFrame
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Image, Mask

from .io import ImageFilesError, ImageReadError, check_image_file, image_exists, read_image, read_mask

#: Columns every samples frame has (anomalib's two plus the ones this package fills in).
SAMPLE_COLUMNS = ("image_path", "label", "label_index", "mask_path", "split")

#: Splits whose files are read (and so checked before training); ``"unused"`` images are never read.
READ_SPLITS = ("train", "val", "test")


def check_samples(samples: DataFrame, name: str = "dataset", splits: tuple[str, ...] = READ_SPLITS) -> None:
    """Check every image and mask file of the given splits from its header; one error lists all bad files.

    The datamodules call this at setup, so a corrupt file, a DICOM without pixels or a 4-D NIfTI in the
    *test* split stops the run before training rather than after it (see
    :func:`~anomalib_sir.data.io.check_image_file` for what is checked; nothing is decoded).

    Raises:
        ImageFilesError: the files that cannot be read, with the reason for each and the count.

    Example:
        >>> import pandas as pd, tempfile
        >>> from pathlib import Path
        >>> bad = Path(tempfile.mkdtemp()) / "scan.png"
        >>> _ = bad.write_text("not an image")
        >>> frame = pd.DataFrame({"image_path": [str(bad)], "mask_path": [""], "split": ["test"]})
        >>> check_samples(frame, "demo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        anomalib_sir.data.io.ImageFilesError: demo: 1 file(s) cannot be read as images; remove or replace ...
        >>> check_samples(frame.assign(split="unused"), "demo")

    """
    rows = samples[samples["split"].isin(splits)] if "split" in samples else samples
    split_of = rows["split"].astype(str).tolist() if "split" in rows else [""] * len(rows)
    images = rows["image_path"].astype(str).tolist()
    masks = rows["mask_path"].fillna("").astype(str).tolist() if "mask_path" in rows else [""] * len(rows)
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, bool]] = set()
    for split, image, mask in zip(split_of, images, masks, strict=True):
        for path, is_mask in ((image, False), (mask, True)):
            if not path or (path, is_mask) in seen:
                continue
            seen.add((path, is_mask))
            problem = check_image_file(path, mask=is_mask)
            if problem is not None:
                where = f" [{split} split{' mask' if is_mask else ''}]" if split else (" [mask]" if is_mask else "")
                problems.append((path, problem + where))
    if problems:
        raise ImageFilesError(problems, name)


def infer_task(samples: DataFrame) -> TaskType:
    """Segmentation when every anomalous sample has a mask, else classification.

    Example:
        >>> frame = pd.DataFrame({"label_index": [0, 1], "mask_path": ["", "m.png"]})
        >>> infer_task(frame).value
        'segmentation'

    """
    abnormal = samples[samples["label_index"] == LabelName.ABNORMAL]
    if len(abnormal) and (abnormal["mask_path"].fillna("").astype(str) != "").all():
        return TaskType.SEGMENTATION
    return TaskType.CLASSIFICATION


class SirDataset(AnomalibDataset):
    """Anomalib image dataset over a samples DataFrame, reading images by content.

    Args:
        samples: one row per image with at least ``image_path`` and ``split``; ``label_index``
            (0 normal, 1 anomalous, missing: unknown) and ``mask_path`` ("" for none) are filled in if absent.
        name: dataset name (used by anomalib for output folders, and as the row name of metric tables).
        augmentations: torchvision v2 transform applied to image (and mask).
        task: ``"classification"`` or ``"segmentation"``; default: inferred from the masks.

    Example:
        >>> import pandas as pd
        >>> SirDataset(pd.DataFrame(columns=["image_path", "split"]), name="empty").name
        'empty'

    """

    def __init__(
        self,
        samples: DataFrame,
        name: str = "sir",
        augmentations: Transform | None = None,
        task: TaskType | str | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        self._name = name
        samples = samples.copy()
        if "label_index" not in samples:
            samples["label_index"] = pd.NA
        if "mask_path" not in samples:
            samples["mask_path"] = ""
        if "label" not in samples:
            samples["label"] = samples["label_index"].map({0: "normal", 1: "abnormal"})
        samples["mask_path"] = samples["mask_path"].fillna("").astype(str)
        samples["image_path"] = samples["image_path"].astype(str)
        samples["label_index"] = samples["label_index"].astype("Int64")
        self.samples = samples
        self.samples.attrs["task"] = TaskType(task).value if task else infer_task(self.samples).value

    @property
    def name(self) -> str:
        """Name of the dataset."""
        return self._name

    @property
    def samples(self) -> DataFrame:
        """The samples DataFrame (see anomalib's ``AnomalibDataset.samples``)."""
        return AnomalibDataset.samples.fget(self)  # type: ignore[attr-defined]

    @samples.setter
    def samples(self, samples: DataFrame) -> None:
        """Set the samples; like anomalib's setter, but volume slice references count as existing files."""
        if not isinstance(samples, DataFrame):
            msg = f"samples must be a pandas.DataFrame, found {type(samples)}"
            raise TypeError(msg)
        missing_columns = {"image_path", "split"} - set(samples.columns)
        if missing_columns:
            msg = f"samples must have (at least) columns ['image_path', 'split'], missing {sorted(missing_columns)}"
            raise ValueError(msg)
        missing = [path for path in samples["image_path"] if not image_exists(path)]
        if missing:
            msg = f"{len(missing)} image file(s) not found, e.g. {missing[:3]}"
            raise FileNotFoundError(msg)
        attrs = dict(self._samples.attrs) if getattr(self, "_samples", None) is not None else {}
        attrs.update(samples.attrs)
        self._samples = samples.sort_values(by="image_path", ignore_index=True)
        self._samples.attrs.update(attrs)

    @classmethod
    def from_dataset(cls, dataset: AnomalibDataset, name: str | None = None) -> SirDataset:
        """Wrap any anomalib image dataset (e.g. anomalib's BMAD or Folder) so it reads through this package.

        Example:
            >>> import pandas as pd
            >>> base = SirDataset(pd.DataFrame(columns=["image_path", "split"]), name="a")
            >>> SirDataset.from_dataset(base, name="b").name
            'b'

        """
        samples = dataset.samples.copy()
        task = dataset.samples.attrs.get("task")
        return cls(samples, name=name or dataset.name, augmentations=dataset.augmentations, task=task)

    def with_samples(self, samples: DataFrame) -> SirDataset:
        """Copy this dataset (name, task, augmentations) onto other samples.

        Example:
            >>> import pandas as pd
            >>> base = SirDataset(pd.DataFrame(columns=["image_path", "split"]), name="a")
            >>> base.with_samples(base.samples).name
            'a'

        """
        dataset = copy.copy(self)
        dataset._samples = None
        dataset.samples = samples.reset_index(drop=True)
        dataset.samples.attrs["task"] = self.samples.attrs.get("task", TaskType.CLASSIFICATION.value)
        return dataset

    def __getitem__(self, index: int) -> DatasetItem:
        """Read one sample: image (``3xHxW`` float in ``[0, 1]``), mask, label and paths.

        Raises:
            ImageReadError: the image or its mask cannot be read (the message names the file).

        """
        row = self.samples.iloc[index]
        image = Image(torch.from_numpy(read_image(row.image_path)).permute(2, 0, 1).contiguous())
        label_index = row.label_index
        known = not pd.isna(label_index)
        gt_mask = None
        if self.task == TaskType.SEGMENTATION and known:
            if int(label_index) == LabelName.NORMAL or not row.mask_path:
                gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
            else:
                mask = read_mask(row.mask_path)
                if mask.shape != tuple(image.shape[-2:]):
                    raise ImageReadError(
                        row.mask_path, f"mask size {mask.shape} differs from image size {tuple(image.shape[-2:])}"
                    )
                gt_mask = Mask(torch.from_numpy(mask.astype("uint8")))
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(int(label_index)) if known else None,
            image_path=row.image_path,
            mask_path=row.mask_path or None,
        )
