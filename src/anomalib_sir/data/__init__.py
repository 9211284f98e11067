"""Medical image reading, anomalib datamodules and per-dataset evaluation for the SIR settings.

* :mod:`~anomalib_sir.data.io` – read PNG/JPEG/BMP/TIFF (8/16-bit), DICOM and NIfTI by content.
* :class:`SirDataset` – anomalib's dataset class reading through that reader.
* :class:`LabelsFile`, :class:`ClassFolders`, :class:`SplitFolders`, :class:`DataJson` – datamodules for
  benchmark layouts.
* :class:`UniversalDataModule` – train on several datasets at once, test each separately.
* :class:`PerDatasetEvaluator` – anomalib metrics per dataset and their mean.

Example:
    >>> from anomalib_sir.data import ImageReadError, LabelsFile, UniversalDataModule
    >>> issubclass(ImageReadError, ValueError)
    True

"""

from .datamodules import ClassFolders, DataJson, LabelsFile, MedicalDataModule, SplitFolders
from .dataset import SirDataset
from .demo import SirDemo, generate_demo_dataset
from .evaluation import PerDatasetEvaluator
from .io import (
    ImageReadError,
    detect_format,
    is_readable_image,
    list_images,
    read_image,
    read_mask,
    read_volume_slices,
    slice_reference,
    volume_depth,
)
from .splits import ShotError, assign_splits
from .universal import UniversalDataModule

__all__ = [
    "ClassFolders",
    "DataJson",
    "ImageReadError",
    "LabelsFile",
    "MedicalDataModule",
    "PerDatasetEvaluator",
    "ShotError",
    "SirDataset",
    "SirDemo",
    "SplitFolders",
    "UniversalDataModule",
    "assign_splits",
    "detect_format",
    "generate_demo_dataset",
    "is_readable_image",
    "list_images",
    "read_image",
    "read_mask",
    "read_volume_slices",
    "slice_reference",
    "volume_depth",
]
