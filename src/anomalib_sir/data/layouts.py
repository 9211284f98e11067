"""Build anomalib samples DataFrames from the folder layouts public medical benchmarks use.

Three layouts, each returning one row per image with the columns anomalib expects
(``image_path``, ``label``, ``label_index``, ``mask_path``, ``split``):

* :func:`labels_file_samples` – one image folder plus a CSV of labels (HeadCT: ``head_ct/NNN.png`` +
  ``labels.csv`` with header ``id, hemorrhage``).
* :func:`class_folder_samples` – a normal folder and one or more abnormal folders (Br35H ``no/`` ``yes/``,
  chest X-ray ``NORMAL/`` ``PNEUMONIA/``, OCT2017 ``NORMAL/`` vs the rest).
* :func:`split_folder_samples` – ``train/good``, ``test|valid/good``, ``test|valid/<abnormal>`` with optional
  masks (BMAD, MedIAnomaly, MVTec-style, few-shot).
* :func:`data_json_samples` – an image folder plus MedIAnomaly's ``data.json`` split file (RSNA, VinCXR,
  BrainTumor, LAG).

``split`` is ``"train"``, ``"val"`` or ``"test"`` where the layout fixes it, and ``""`` for normal images of
layouts without a split (labels file, class folders); :mod:`anomalib_sir.data.splits` assigns those.
Images are found by content (:func:`~anomalib_sir.data.io.list_images`). Files *named* like images whose
content is not an image are kept in the frame, so that the datamodules' check of every file
(:func:`~anomalib_sir.data.io.check_image_files`, run at setup) reports them together with any other bad file.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for folder, count in (("no", 3), ("yes", 2)):
    ...     (root / folder).mkdir()
    ...     for i in range(count):
    ...         Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / folder / f"{i}.jpg")
    >>> frame = class_folder_samples(root, normal_dir="no", abnormal_dirs="yes")
    >>> frame.groupby("split").size().to_dict()
    {'': 3, 'test': 2}

"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anomalib.data.utils import LabelName
from pandas import DataFrame

from .io import list_images, parse_slice_reference

logger = logging.getLogger(__name__)

#: Sub-folder names that hold masks, never images, inside a class folder.
MASK_DIR_NAMES: tuple[str, ...] = (
    "label",
    "labels",
    "mask",
    "masks",
    "ground_truth",
    "gt",
    "anomaly_mask",
    "annotation",
    "annotations",
)
#: Sub-folder names that hold the images when a class folder also holds masks (BMAD: ``img/`` + ``label/``).
IMAGE_DIR_NAMES: tuple[str, ...] = ("img", "image", "images")
#: Suffixes stripped from mask file stems to find their image (MVTec ``_mask``, ISIC ``_segmentation``).
MASK_STEM_SUFFIXES: tuple[str, ...] = ("_mask", "_segmentation", "_seg", "_label", "_gt")


def _stem(path: str) -> str:
    """File stem of a path or slice reference (``.nii.gz`` counts as one suffix)."""
    parsed = parse_slice_reference(path)
    name = Path(parsed[0] if parsed else path).name
    for suffix in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem if "." in name else name
    return f"{name}::{path.rsplit('::', 1)[1]}" if parsed else name


def _frame(images: Sequence[str], label_index: int, split: str, masks: Sequence[str] | None = None) -> DataFrame:
    """Rows for images of one label and split."""
    return DataFrame(
        {
            "image_path": [str(p) for p in images],
            "label": ["normal" if label_index == LabelName.NORMAL else "abnormal"] * len(images),
            "label_index": pd.array([label_index] * len(images), dtype="Int64"),
            "mask_path": list(masks) if masks is not None else [""] * len(images),
            "split": [split] * len(images),
        }
    )


def _concat(frames: list[DataFrame]) -> DataFrame:
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return _frame([], 0, "")
    frame = pd.concat(frames, ignore_index=True)
    frame["label_index"] = frame["label_index"].astype("Int64")
    return frame


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        available = ", ".join(p.name for p in _subdirs(folder.parent)) if folder.parent.is_dir() else "none"
        msg = f"{what} folder not found: {folder} (folders there: {available or 'none'})"
        raise FileNotFoundError(msg)
    return folder


def match_masks(images: Sequence[str], mask_files: Sequence[str]) -> list[str]:
    """Mask path for each image (``""`` where none), matching file stems (``001`` ↔ ``001_mask``).

    Example:
        >>> match_masks(["/d/img/001.png", "/d/img/002.png"], ["/d/label/001_mask.png"])
        ['/d/label/001_mask.png', '']

    """
    by_stem: dict[str, str] = {}
    for mask in mask_files:
        stem = _stem(mask)
        by_stem.setdefault(stem, mask)
        for suffix in MASK_STEM_SUFFIXES:
            if stem.endswith(suffix):
                by_stem.setdefault(stem[: -len(suffix)], mask)
    return [by_stem.get(_stem(image), "") for image in images]


def _class_images(
    folder: Path, expand_volumes: bool, axis: int, extra_masks: Path | None = None
) -> tuple[list[str], list[str]]:
    """Images of one class folder and their masks (``img/`` + ``label/`` sub-folders, or a mask folder)."""
    image_dir = next((folder / name for name in IMAGE_DIR_NAMES if (folder / name).is_dir()), folder)
    images = list_images(
        image_dir, exclude_dirs=MASK_DIR_NAMES, expand_volumes=expand_volumes, axis=axis, keep_unreadable=True
    )
    mask_files: list[str] = []
    for name in MASK_DIR_NAMES:
        if (folder / name).is_dir():
            mask_files += list_images(folder / name, expand_volumes=expand_volumes, axis=axis, keep_unreadable=True)
    if extra_masks is not None and extra_masks.is_dir():
        mask_files += list_images(extra_masks, expand_volumes=expand_volumes, axis=axis, keep_unreadable=True)
    return images, match_masks(images, mask_files) if mask_files else [""] * len(images)


def _id_key(value: object) -> str:
    """Normalise an id or a file stem: ``"007"`` and ``7`` both become ``"7"``; text is lower-cased."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.0+)?", text):
        return str(int(float(text)))
    return text.lower()


def _same_label(value: object, target: object) -> bool:
    """Compare labels as numbers when both are numbers, else as stripped, case-insensitive text."""
    try:
        return float(str(value).strip()) == float(str(target).strip())
    except ValueError:
        return str(value).strip().lower() == str(target).strip().lower()


def labels_file_samples(
    root: str | Path,
    image_dir: str = "head_ct",
    labels_file: str = "labels.csv",
    id_column: str = "id",
    label_column: str = "hemorrhage",
    normal_label: str | int = 0,
    expand_volumes: bool = False,
    slice_axis: int = 2,
    require_both_classes: bool = True,
) -> DataFrame:
    r"""Build samples from an image folder plus a labels CSV (HeadCT layout).

    Column names are matched after stripping spaces and ignoring case (HeadCT's header is ``id, hemorrhage``).
    An id matches a file by name, or by stem with zero padding ignored (id ``7`` ↔ ``007.png``). Rows whose
    label equals ``normal_label`` are normal, every other label is anomalous. Labelled ids with no image are an
    error; images with no label are skipped with a warning.

    Raises:
        FileNotFoundError: missing folder or labels file.
        ValueError: missing column, or ids with no image.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp()); (root / "head_ct").mkdir()
        >>> for i in range(4):
        ...     Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "head_ct" / f"{i:03d}.png")
        >>> _ = (root / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n")
        >>> labels_file_samples(root)["label_index"].tolist()
        [1, 1, 0, 0]

    """
    root = Path(root)
    folder = _require_dir(root / image_dir, "Image")
    labels_path = root / labels_file
    if not labels_path.is_file():
        msg = f"Labels file not found: {labels_path}"
        raise FileNotFoundError(msg)
    table = pd.read_csv(labels_path, skipinitialspace=True, dtype=str)
    columns = {str(c).strip().lower(): c for c in table.columns}
    for wanted in (id_column, label_column):
        if wanted.strip().lower() not in columns:
            msg = f"{labels_path}: no column {wanted!r} (columns: {[str(c).strip() for c in table.columns]})"
            raise ValueError(msg)
    ids = table[columns[id_column.strip().lower()]].astype(str).str.strip()
    labels = table[columns[label_column.strip().lower()]].astype(str).str.strip()

    files = list_images(folder, expand_volumes=expand_volumes, axis=slice_axis, keep_unreadable=True)
    by_key: dict[str, list[str]] = {}
    for file in files:
        parsed = parse_slice_reference(file)
        base = parsed[0] if parsed else Path(file)
        for key in {_id_key(base.name), _id_key(_stem(str(base)))}:
            by_key.setdefault(key, []).append(file)
    rows, missing, used = [], [], set()
    for file_id, label in zip(ids, labels, strict=True):
        matches = by_key.get(_id_key(file_id), [])
        if not matches:
            missing.append(file_id)
            continue
        index = LabelName.NORMAL if _same_label(label, normal_label) else LabelName.ABNORMAL
        for file in matches:
            rows.append(_frame([file], index, "" if index == LabelName.NORMAL else "test"))
            used.add(file)
    if missing:
        msg = f"{labels_path}: {len(missing)} id(s) have no image in {folder}, e.g. {missing[:5]}"
        raise ValueError(msg)
    unlabelled = [f for f in files if f not in used]
    if unlabelled:
        logger.warning("%d image(s) in %s have no row in %s and are ignored", len(unlabelled), folder, labels_path)
    frame = _concat(rows)
    return _check_classes(frame, root) if require_both_classes else frame


def _check_classes(frame: DataFrame, root: Path) -> DataFrame:
    """Refuse a dataset without normal or without anomalous images."""
    if not (frame["label_index"] == LabelName.NORMAL).any():
        msg = f"No normal images found under {root}"
        raise ValueError(msg)
    if not (frame["label_index"] == LabelName.ABNORMAL).any():
        msg = f"No anomalous images found under {root}"
        raise ValueError(msg)
    return frame


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _abnormal_folders(
    parent: Path, normal_dir: str, abnormal_dirs: list[str] | None, skip: Sequence[str]
) -> list[Path]:
    """Explicit abnormal folders (must exist) or every other visible sub-folder of ``parent``."""
    if abnormal_dirs is not None:
        return [_require_dir(parent / name, "Abnormal") for name in abnormal_dirs]
    skipped = {normal_dir.lower(), *(s.lower() for s in skip), *MASK_DIR_NAMES}
    return [p for p in _subdirs(parent) if p.name.lower() not in skipped]


def _abnormal_rows(
    folders: list[Path], explicit: bool, split: str, expand_volumes: bool, axis: int, mask_root: Path | None
) -> list[DataFrame]:
    """Rows of the anomalous folders; an empty explicit folder is an error, an empty implicit one a warning."""
    rows = []
    for folder in folders:
        extra = mask_root / folder.name if mask_root is not None else None
        images, masks = _class_images(folder, expand_volumes, axis, extra_masks=extra)
        if not images:
            if explicit:
                msg = f"Abnormal folder contains no images: {folder}"
                raise ValueError(msg)
            logger.warning("Skipping empty folder %s", folder)
            continue
        rows.append(_frame(images, LabelName.ABNORMAL, split, masks))
    return rows


def class_folder_samples(
    root: str | Path,
    normal_dir: str = "NORMAL",
    abnormal_dirs: str | Sequence[str] | None = None,
    mask_dir: str | None = None,
    expand_volumes: bool = False,
    slice_axis: int = 2,
) -> DataFrame:
    """Build samples from a normal class folder and abnormal class folder(s) under ``root`` (no train/test split).

    Args:
        root: folder holding the class folders.
        normal_dir: name of the normal class folder (``"no"`` for Br35H/BrainMRI, ``"NORMAL"`` for chest X-ray).
        abnormal_dirs: name(s) of abnormal folders; ``None``: every other sub-folder (OCT2017: CNV, DME, DRUSEN).
        mask_dir: optional folder (relative to ``root``) of masks, per class (``<mask_dir>/<class>/``) or flat.
        expand_volumes: one sample per slice of 3-D NIfTI / multi-frame DICOM files.
        slice_axis: slicing axis for ``expand_volumes``.

    Raises:
        FileNotFoundError: a named folder does not exist.
        ValueError: the normal folder (or a named abnormal folder) holds no images, or no abnormal images at all.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp()); (root / "NORMAL").mkdir()
        >>> class_folder_samples(root)
        Traceback (most recent call last):
        ...
        ValueError: Normal folder contains no images: ...NORMAL

    """
    root = Path(root)
    normal = _require_dir(root / normal_dir, "Normal")
    images, _ = _class_images(normal, expand_volumes, slice_axis)
    if not images:
        msg = f"Normal folder contains no images: {normal}"
        raise ValueError(msg)
    abnormal_names = _as_list(abnormal_dirs)
    skip = [mask_dir] if mask_dir else []
    folders = _abnormal_folders(root, normal_dir, abnormal_names, skip)
    mask_root = root / mask_dir if mask_dir else None
    rows = [_frame(images, LabelName.NORMAL, "", [""] * len(images))]
    rows += _abnormal_rows(folders, abnormal_names is not None, "test", expand_volumes, slice_axis, mask_root)
    frame = _concat(rows)
    if mask_root is not None and mask_root.is_dir():  # flat mask folder
        flat = list_images(
            mask_root, recursive=False, expand_volumes=expand_volumes, axis=slice_axis, keep_unreadable=True
        )
        abnormal = (frame["label_index"] == LabelName.ABNORMAL) & (frame["mask_path"] == "")
        if flat and abnormal.any():
            frame.loc[abnormal, "mask_path"] = match_masks(frame.loc[abnormal, "image_path"].tolist(), flat)
    return _check_classes(frame, root)


def _first_existing(root: Path, names: Sequence[str]) -> str | None:
    return next((name for name in names if (root / name).is_dir()), None)


def split_folder_samples(
    root: str | Path,
    train_dir: str = "train",
    test_dir: str | None = None,
    val_dir: str | None = None,
    normal_dir: str = "good",
    abnormal_dirs: str | Sequence[str] | None = None,
    mask_dir: str | None = None,
    expand_volumes: bool = False,
    slice_axis: int = 2,
    train_normal_dir: str | None = None,
) -> DataFrame:
    """Build samples from split folders: ``train/<normal>``, ``test/<normal>``, ``test/<abnormal>`` (+ ``valid/``).

    Masks are found, matched by file stem, in ``<class>/label`` (or ``mask``, ``ground_truth`` ...) next to
    ``<class>/img`` (BMAD), in ``<root>/ground_truth/<class>/`` (MVTec: ``000_mask.png``), or in
    ``<root>/<mask_dir>/<class>/``.

    Args:
        root: dataset folder.
        train_dir: training split folder; only its ``normal_dir`` is used.
        test_dir: test split folder; default ``"test"`` if present, else ``"valid"`` / ``"val"``.
        val_dir: validation split folder (may contain anomalies: BMAD's ``valid``); default ``"valid"`` or
            ``"val"`` when present and not the test folder; ``""`` disables it.
        normal_dir: normal class folder name inside each split (``good``, ``NORMAL``).
        abnormal_dirs: abnormal class folder name(s) inside test/valid; ``None``: every other folder
            (``Ungood``, ``bad``, MVTec defect types, OCT2017 CNV/DME/DRUSEN).
        mask_dir: optional extra mask folder relative to ``root``, with one sub-folder per class.
        expand_volumes: one sample per slice of 3-D NIfTI / multi-frame DICOM files.
        slice_axis: slicing axis for ``expand_volumes``.
        train_normal_dir: normal folder inside ``train_dir`` if it differs from ``normal_dir``; ``"."``: the
            training images lie directly in ``train_dir`` (MedIAnomaly BraTS2021).

    Raises:
        FileNotFoundError: a split or class folder does not exist.
        ValueError: a split has no normal images, or the test split has no anomalous images.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for folder in ("train/good", "test/good", "test/Ungood/img", "test/Ungood/label"):
        ...     (root / folder).mkdir(parents=True)
        ...     Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / folder / "001.png")
        >>> frame = split_folder_samples(root)
        >>> frame[["split", "label_index"]].values.tolist(), bool(frame["mask_path"].iloc[2])
        ([['train', 0], ['test', 0], ['test', 1]], True)

    """
    root = Path(root)
    _require_dir(root, "Dataset")
    _require_dir(root / train_dir, "Train split")
    test_dir = test_dir or _first_existing(root, ("test", "valid", "val"))
    if test_dir is None:
        msg = f"No test split folder (test/, valid/ or val/) under {root}"
        raise FileNotFoundError(msg)
    if val_dir is None:
        val_dir = next((n for n in ("valid", "val") if n != test_dir and (root / n).is_dir()), "")
    mask_root = root / mask_dir if mask_dir else (root / "ground_truth" if (root / "ground_truth").is_dir() else None)
    abnormal_names = _as_list(abnormal_dirs)

    rows = []
    for split_name, folder_name in (("train", train_dir), ("test", test_dir), ("val", val_dir)):
        if not folder_name:
            continue
        split_root = _require_dir(root / folder_name, f"{split_name.capitalize()} split")
        normal_name = (train_normal_dir or normal_dir) if split_name == "train" else normal_dir
        normal_folder = _require_dir(split_root / normal_name, f"Normal ({split_name})")
        images, _ = _class_images(normal_folder, expand_volumes, slice_axis)
        if not images:
            msg = f"Normal folder contains no images: {normal_folder}"
            raise ValueError(msg)
        rows.append(_frame(images, LabelName.NORMAL, split_name, [""] * len(images)))
        if split_name == "train":
            others = [p.name for p in _subdirs(split_root) if p.name != normal_name and normal_name != "."]
            if others:
                logger.info("Ignoring non-normal training folders %s in %s", others, split_root)
            continue
        folders = _abnormal_folders(split_root, normal_dir, abnormal_names, [])
        abnormal = _abnormal_rows(
            folders, abnormal_names is not None, split_name, expand_volumes, slice_axis, mask_root
        )
        if split_name == "test" and not abnormal:
            msg = f"Test split {split_root} has no anomalous images (folders: {[p.name for p in folders]})"
            raise ValueError(msg)
        rows += abnormal
    return _concat(rows)


def data_json_samples(
    root: str | Path,
    json_file: str = "data.json",
    image_dir: str = "images",
    normal_key: str = "0",
    abnormal_key: str = "1",
) -> DataFrame:
    """Build samples from a MedIAnomaly ``data.json``: ``{"train": {"0": [...]}, "test": {"0": [...], "1": [...]}}``.

    File names are relative to ``root/image_dir``; the file fixes the train/test split (training abnormals, if
    listed, are ignored).

    Raises:
        FileNotFoundError: missing JSON file, image folder or listed image.
        ValueError: the JSON has no training normals or no test anomalies.

    Example:
        >>> import json, numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp()); (root / "images").mkdir()
        >>> for name in ("a.png", "b.png", "c.png"):
        ...     Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "images" / name)
        >>> _ = (root / "data.json").write_text(json.dumps({"train": {"0": ["a.png"]},
        ...                                                 "test": {"0": ["b.png"], "1": ["c.png"]}}))
        >>> data_json_samples(root)[["split", "label_index"]].values.tolist()
        [['train', 0], ['test', 0], ['test', 1]]

    """
    root = Path(root)
    json_path = root / json_file
    if not json_path.is_file():
        msg = f"Split file not found: {json_path}"
        raise FileNotFoundError(msg)
    folder = _require_dir(root / image_dir, "Image")
    content = json.loads(json_path.read_text())

    def files(split: str, key: str) -> list[str]:
        names = content.get(split, {}).get(key, [])
        paths = [str(folder / name) for name in names]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            msg = f"{json_path}: {len(missing)} listed image(s) missing, e.g. {missing[:3]}"
            raise FileNotFoundError(msg)
        return paths

    train, test_normal, test_abnormal = (
        files("train", normal_key),
        files("test", normal_key),
        files("test", abnormal_key),
    )
    if not train or not test_abnormal:
        msg = f"{json_path}: needs training normals (train/{normal_key}) and test anomalies (test/{abnormal_key})"
        raise ValueError(msg)
    return _concat(
        [
            _frame(train, LabelName.NORMAL, "train"),
            _frame(test_normal, LabelName.NORMAL, "test"),
            _frame(test_abnormal, LabelName.ABNORMAL, "test"),
        ]
    )
