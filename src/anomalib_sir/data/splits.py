"""Seeded, leakage-free train / validation / test splits with k-shot selection.

:func:`assign_splits` takes a samples frame from :mod:`anomalib_sir.data.layouts` and decides, for every
image that the layout did not place, whether it is a training, validation or test image. Two seeds keep
the *data split* apart from the *reference draw*:

1. **Test normals** (``split_seed``) – normals without a split are shuffled; ``test_split_ratio`` of them go
   to the test set (default 50/50), the rest form the *training pool*. Anomalous images are always test
   images (or validation images where the layout has a validation folder). The test set depends only on the
   data, ``split_seed`` and ``test_split_ratio`` – never on ``shot`` or ``seed`` – so one-shot and full-shot
   runs, and every reference draw, are scored on the same images.
2. **Validation** (``split_seed``, policy ``val_split_mode``, anomalib's :class:`~anomalib.data.utils.ValSplitMode`)
   – a layout's own validation folder (BMAD ``valid/``) is used as is. Otherwise:

   * ``from_train`` (default): ``round(val_split_ratio * pool)`` normals are held out of the training pool
     when at least ``shot`` (or one) training images remain; if the pool is too small the *training images
     themselves* are reused. Validation is normal-only: it only fits score normalisation and thresholds
     (see :mod:`anomalib_sir.post_processing`).
   * ``from_test``: a stratified, labelled hold-out – ``val_split_ratio`` of the test normals *and* of the
     anomalies (at least one of each class that has two or more) move from test to validation, so
     validation AUROC can choose settings. The remaining test
     images are never used for choosing anything.

3. **Shots** (``seed``) – ``shot=k`` keeps the first ``k`` images of a seeded permutation of the remaining
   pool (so 1-shot ⊂ 5-shot ⊂ ...); ``None`` keeps them all. Pool images that are not chosen are marked
   ``"unused"``.

The result has ``split`` in ``{"train", "val", "test", "unused"}``; :func:`split_record` turns it into the
table that is logged and written next to the run so it can be reproduced.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"image_path": [f"n{i}.png" for i in range(10)] + ["a.png", "b.png"],
    ...                       "label_index": [0] * 10 + [1, 1], "mask_path": "", "split": [""] * 10 + ["test"] * 2})
    >>> assign_splits(frame, shot=1, seed=0).groupby("split").size().to_dict()
    {'test': 7, 'train': 1, 'unused': 3, 'val': 1}
    >>> assign_splits(frame, shot=1, seed=0, val_split_mode="from_test").groupby("split").size().to_dict()
    {'test': 5, 'train': 1, 'unused': 4, 'val': 2}

"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from anomalib.data.utils import LabelName, ValSplitMode
from pandas import DataFrame

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "unused")
#: Validation policies :func:`assign_splits` supports (anomalib's enum values).
VAL_SPLIT_MODES = (ValSplitMode.FROM_TRAIN, ValSplitMode.FROM_TEST)


class ShotError(ValueError):
    """More training shots were asked for than there are training normals."""


def _permutation(count: int, seed: int | None, salt: int) -> np.ndarray:
    """Seeded permutation; ``salt`` separates the independent stages (test split, validation, shots)."""
    return np.random.default_rng(None if seed is None else [seed, salt]).permutation(count)


def val_split_mode_of(value: ValSplitMode | str) -> ValSplitMode:
    """Parse a validation policy, accepting only those :func:`assign_splits` implements.

    Example:
        >>> val_split_mode_of("from_test").value
        'from_test'
        >>> val_split_mode_of("same_as_test")
        Traceback (most recent call last):
        ...
        ValueError: val_split_mode must be 'from_train' (normal-only hold-out of the training pool) or ...

    """
    mode = ValSplitMode(value)
    if mode not in VAL_SPLIT_MODES:
        msg = (
            "val_split_mode must be 'from_train' (normal-only hold-out of the training pool) or 'from_test' "
            f"(stratified labelled hold-out of the test images), got {mode.value!r}"
        )
        raise ValueError(msg)
    return mode


def assign_splits(
    samples: DataFrame,
    shot: int | None = None,
    test_split_ratio: float = 0.5,
    val_split_ratio: float = 0.2,
    seed: int | None = 0,
    name: str = "dataset",
    split_seed: int | None = 0,
    val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TRAIN,
) -> DataFrame:
    """Fill in ``split`` for every row (see the module docstring for the rules).

    Args:
        samples: frame with ``image_path``, ``label_index`` and ``split`` (``""`` where not fixed by the layout).
        shot: number of training normals (``None``: all of them).
        test_split_ratio: fraction of *unsplit* normals that become test images.
        val_split_ratio: fraction held out for validation (of the training pool, or of each test class).
        seed: seed of the k-shot draw (``None``: not reproducible).
        name: dataset name for messages.
        split_seed: seed of the test and validation split (``None``: not reproducible).
        val_split_mode: ``"from_train"`` or ``"from_test"`` (see the module docstring).

    Returns:
        A copy of ``samples`` with a ``split`` in ``{"train", "val", "test", "unused"}`` and a boolean
        ``val_is_train`` attribute in ``.attrs`` telling whether validation reuses the training images.

    Raises:
        ShotError: ``shot`` is larger than the number of training normals.
        ValueError: bad ratios, ``shot < 1``, an unsupported ``val_split_mode``, or no training normals.

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"image_path": ["a", "b"], "label_index": [0, 0], "split": ["", ""]})
        >>> assign_splits(frame, shot=5)
        Traceback (most recent call last):
        ...
        anomalib_sir.data.splits.ShotError: dataset: shot=5 but only 1 training normal image(s) ...

    """
    mode = val_split_mode_of(val_split_mode)
    if not 0.0 <= test_split_ratio < 1.0 or not 0.0 <= val_split_ratio < 1.0:
        msg = f"{name}: ratios must be in [0, 1), got test_split_ratio={test_split_ratio}, val={val_split_ratio}"
        raise ValueError(msg)
    if shot is not None and shot < 1:
        msg = f"{name}: shot must be a positive integer or None, got {shot}"
        raise ValueError(msg)
    frame = samples.sort_values("image_path", ignore_index=True).copy()
    split = frame["split"].fillna("").astype(str).to_numpy(dtype=object)
    normal = (frame["label_index"] == LabelName.NORMAL).fillna(False).to_numpy()

    # 1. unsplit normals -> test / training pool; unsplit anomalies -> test.
    unsplit = np.flatnonzero((split == "") & normal)
    order = unsplit[_permutation(len(unsplit), split_seed, 0)]
    num_test = round(test_split_ratio * len(order))
    split[order[:num_test]] = "test"
    split[order[num_test:]] = "train"
    split[(split == "") & ~normal] = "test"

    pool = np.flatnonzero(split == "train")
    if len(pool) == 0:
        msg = f"{name}: no training normal image(s) (check the normal folder / labels and test_split_ratio)"
        raise ValueError(msg)

    # 2. validation (unless the layout has a validation split).
    has_val_split = bool((split == "val").any())
    if not has_val_split and mode == ValSplitMode.FROM_TEST:
        for is_normal in (True, False):
            members = np.flatnonzero((split == "test") & (normal == is_normal))
            members = members[_permutation(len(members), split_seed, 3 if is_normal else 4)]
            count = round(val_split_ratio * len(members))
            if val_split_ratio > 0 and len(members) >= 2:  # both classes in validation, one left for test
                count = min(max(1, count), len(members) - 1)
            split[members[:count]] = "val"
    elif not has_val_split:
        pool = pool[_permutation(len(pool), split_seed, 1)]
        num_val = min(round(val_split_ratio * len(pool)), len(pool) - (shot or 1))
        if num_val > 0:
            split[pool[len(pool) - num_val :]] = "val"
            pool = pool[: len(pool) - num_val]
    if shot is not None and shot > len(pool):
        msg = (
            f"{name}: shot={shot} but only {len(pool)} training normal image(s) are available "
            f"(after the seeded {test_split_ratio:.0%} test split); use a smaller shot or shot=None"
        )
        raise ShotError(msg)

    # 3. k shots: a prefix of the seeded pool order (nested across k).
    pool = np.sort(pool)[_permutation(len(pool), seed, 2)]
    chosen = pool if shot is None else pool[:shot]
    split[np.setdiff1d(pool, chosen)] = "unused"
    frame["split"] = split
    frame.attrs["val_is_train"] = not bool((split == "val").any())
    frame.attrs["shot"] = shot
    frame.attrs["seed"] = seed
    frame.attrs["split_seed"] = split_seed
    return frame


def split_record(frame: DataFrame, name: str) -> DataFrame:
    """Make the reproducibility record of a split: dataset, split, label and path of every image, sorted.

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"image_path": ["b", "a"], "label_index": [0, 1], "split": ["train", "test"]})
        >>> split_record(frame, "x").values.tolist()
        [['x', 'test', 1, 'a'], ['x', 'train', 0, 'b']]

    """
    record = DataFrame(
        {
            "dataset": name,
            "split": frame["split"].to_numpy(),
            "label_index": frame["label_index"].to_numpy(),
            "image_path": frame["image_path"].astype(str).to_numpy(),
        }
    )
    return record.sort_values(["split", "image_path"], ignore_index=True)


def _record_path(directory: Path, name: str, text: str) -> tuple[Path, bool]:
    """``(path, write)`` for a split record: the first free name, or an existing file with the same content.

    A file with different content is never overwritten (``<name>-2.csv``, ``<name>-3.csv``, ... instead).
    """
    folder = directory / "splits"
    index = 1
    while True:
        path = folder / (f"{name}.csv" if index == 1 else f"{name}-{index}.csv")
        if not path.exists():
            return path, True
        try:
            if path.read_text() == text:
                return path, False
        except (OSError, UnicodeDecodeError):
            pass
        index += 1


def log_split(frame: DataFrame, name: str, directory: str | Path | None = None, max_listed: int = 20) -> Path | None:
    """Log the split sizes and chosen training files; write ``splits/<name>.csv`` under ``directory``.

    An existing record is never overwritten: if ``splits/<name>.csv`` holds the same split it is kept as
    is (e.g. ``anomalib test`` in the training run's folder, on the same data config); if it holds a
    different one, the record goes to ``splits/<name>-2.csv`` (``-3`` ...), and the path is logged.

    Returns:
        The record file (written now, or an identical existing one), or ``None`` when no ``directory`` is given.

    Example:
        >>> import pandas as pd, tempfile
        >>> frame = pd.DataFrame({"image_path": ["a", "b"], "label_index": [0, 1], "split": ["train", "test"]})
        >>> folder = tempfile.mkdtemp()
        >>> log_split(frame, "x", folder).name, log_split(frame, "x", folder).name
        ('x.csv', 'x.csv')
        >>> log_split(frame.assign(split=["test", "train"]), "x", folder).name
        'x-2.csv'

    """
    counts = frame.groupby("split").size().to_dict()
    train = sorted(frame.loc[frame["split"] == "train", "image_path"].astype(str))
    listed = ", ".join(train[:max_listed]) + (f", ... ({len(train)} in total)" if len(train) > max_listed else "")
    logger.info("%s split sizes %s; training images: %s", name, counts, listed)
    if frame.attrs.get("val_is_train"):
        logger.info("%s: too few training normals for a hold-out, validation reuses the training images", name)
    if directory is None:
        return None
    text = split_record(frame, name).to_csv(index=False)
    path, write = _record_path(Path(directory), name, text)
    if not write:
        logger.info("%s split unchanged, already recorded in %s", name, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", newline="") as file:  # exclusive: never overwrite
        file.write(text)
    if path.name != f"{name}.csv":
        logger.warning(
            "%s: %s holds a different split (other data or split settings); not overwritten",
            name,
            path.with_name(f"{name}.csv"),
        )
    logger.info("%s split written to %s", name, path)
    return path
