"""Score new scans with an exported model: CSV of scores and decisions, heatmap PNGs.

Inputs can be image files (PNG 8/16-bit, JPEG, DICOM, 2-D NIfTI; read by content with
:func:`anomalib_sir.data.io.read_image`), volumes (3-D NIfTI, multi-frame DICOM; scored slice by slice with
:func:`anomalib_sir.data.io.read_volume_slices`), or folders of any of these (searched recursively, so a
folder of ``.dcm`` files, i.e. a DICOM series, is scored slice by slice). Non-image files in folders are
ignored; image files that fail to read are skipped with a warning and listed in the result.

The exported model (OpenVINO ``.xml``, or ``.onnx`` run by OpenVINO) is run with anomalib's
``OpenVINOInferencer``; it holds the pre-processing and the threshold, so the decision is the model's own
``pred_label``. Each image gets a row in ``predictions.csv`` and, optionally, a PNG made by anomalib's
``visualize_image_item``: the image, the anomaly map and the map overlaid on the image.

Results go to a *fresh* folder: if ``output_dir`` exists and is not empty, ``output_dir-2``,
``output_dir-3``, ... is used instead, and every file is created exclusively, so existing outputs are
never overwritten.

Example:
    >>> from anomalib_sir.deploy import predict_scans
    >>> run = predict_scans("export/weights/openvino/model.xml", ["scans/"], "predictions")  # doctest: +SKIP
    >>> run.csv_path.name, run.num_images >= 0  # doctest: +SKIP
    ('predictions.csv', True)

"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anomalib.data import NumpyImageItem
from anomalib.visualization import visualize_image_item
from PIL import Image

from anomalib_sir.data.io import ImageReadError, list_images, read_image, read_volume_slices, volume_depth

from .runtime import DEFAULT_OPENVINO_PRECISION, OpenVINORuntime

logger = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = ("name", "source", "pred_score", "pred_label", "decision", "heatmap")


@dataclass(frozen=True)
class ScanImage:
    """One 2-D image to score."""

    name: str
    """Readable unique id: the path relative to the input folder, plus the slice for volumes."""
    source: Path
    """The file it was read from."""
    image: np.ndarray
    """``(H, W, 3)`` float32 in ``[0, 1]``."""


@dataclass(frozen=True)
class PredictionRun:
    """What :func:`predict_scans` wrote."""

    output_dir: Path
    csv_path: Path
    num_images: int
    num_anomalous: int
    skipped: tuple[Path, ...]
    """Files that could not be read as images."""


def _read_file(path: Path, name: str) -> Iterator[ScanImage]:
    """Every slice of a volume (3-D NIfTI, multi-frame DICOM), or the single image of any other file."""
    if volume_depth(path) > 1:
        for reference, image in read_volume_slices(path):
            yield ScanImage(name=f"{name}::{reference.rsplit('::', 1)[-1]}", source=path, image=image)
    else:
        yield ScanImage(name=name, source=path, image=read_image(path))


def iter_scan_images(inputs: Iterable[str | Path], skipped: list[Path] | None = None) -> Iterator[ScanImage]:
    """Yield every 2-D image found in ``inputs`` (files or folders), one at a time.

    Folders are listed with :func:`anomalib_sir.data.io.list_images` (recursive, by content, hidden and
    non-image files ignored). Volumes yield one image per slice, named ``<file>::axis2:0007``.

    Args:
        inputs: image/DICOM/NIfTI files and folders.
        skipped: if given, files inside folders that fail to read are appended to it (and skipped).

    Raises:
        FileNotFoundError: an input does not exist.
        ImageReadError: an input given explicitly as a file cannot be read, or a file in a folder is
            named like an image but is not one.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 6), np.uint8)).save(folder / "a.png")
        >>> [(scan.name, scan.image.shape) for scan in iter_scan_images([folder])]
        [('a.png', (4, 6, 3))]

    """
    for item in inputs:
        root = Path(item).expanduser()
        if root.is_file():
            yield from _read_file(root, root.name)
            continue
        if not root.is_dir():
            msg = f"input not found: {root}"
            raise FileNotFoundError(msg)
        for file in list_images(root, recursive=True):
            path = Path(file)
            try:
                yield from _read_file(path, path.relative_to(root).as_posix())
            except ImageReadError as exc:
                logger.warning("Skipping %s: %s", path, exc)
                if skipped is not None:
                    skipped.append(path)


def fresh_directory(path: str | Path) -> Path:
    """Create and return ``path``, or ``path-2``, ``path-3``, ... if it exists and is not empty.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> (fresh_directory(root / "out") / "a.csv").touch()
        >>> fresh_directory(root / "out").name
        'out-2'

    """
    path = Path(path).expanduser()
    candidate, index = path, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
        index += 1
        candidate = path.with_name(f"{path.name}-{index}")


def _safe_filename(name: str) -> str:
    """``bad/007.png`` -> ``bad_007``; ``ct.nii.gz::axis2:0004`` -> ``ct.nii.gz_axis2_0004``."""
    name = re.sub(r"\.(png|jpe?g|bmp|tiff?|dcm|dicom)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:120] or "image"


def _batches(images: Iterable[ScanImage], batch_size: int) -> Iterator[list[ScanImage]]:
    """Consecutive images of one shape, at most ``batch_size`` at a time (slices of a volume batch)."""
    batch: list[ScanImage] = []
    for scan in images:
        if batch and (len(batch) == batch_size or batch[0].image.shape != scan.image.shape):
            yield batch
            batch = []
        batch.append(scan)
    if batch:
        yield batch


def heatmap_figure(item: NumpyImageItem, size: int = 256) -> Image.Image:
    """Draw image | anomaly map | overlay side by side with anomalib's ``visualize_image_item``.

    Each panel keeps the image's aspect ratio, its longest side ``size`` pixels.

    Example:
        >>> import numpy as np
        >>> from anomalib.data import NumpyImageItem
        >>> item = NumpyImageItem(image=np.zeros((40, 80, 3), np.float32),
        ...                       anomaly_map=np.zeros((32, 32), np.float32))
        >>> heatmap_figure(item, size=128).size
        (384, 64)

    """
    height, width = item.image.shape[:2]
    scale = size / max(height, width)
    field_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return visualize_image_item(
        item,
        fields=["image", "anomaly_map"],
        overlay_fields=[("image", ["anomaly_map"])],
        field_size=field_size,
    )


def predict_scans(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    device: str = "CPU",
    batch_size: int = 8,
    heatmaps: bool = True,
    heatmap_size: int = 256,
    precision: str | None = DEFAULT_OPENVINO_PRECISION,
) -> PredictionRun:
    """Score every image in ``inputs``; write ``predictions.csv`` and ``heatmaps/*.png`` to a fresh folder.

    Args:
        model_path: exported model, ``model.xml`` (OpenVINO IR) or ``model.onnx``.
        inputs: files and folders (see :func:`iter_scan_images`).
        output_dir: where results go (a numbered sibling is used if it already holds files).
        device: OpenVINO device.
        batch_size: images of the same size (e.g. slices of one volume) scored together.
        heatmaps: also write the heatmap PNGs.
        heatmap_size: longest side of each heatmap panel, pixels.
        precision: OpenVINO ``INFERENCE_PRECISION_HINT``; float32 by default, so scores and decisions are
            the trained model's (``"bf16"`` may be faster on CPUs with bf16 units, not always; ``None``:
            the plugin's default).

    Returns:
        What was written; CSV columns are :data:`CSV_COLUMNS` (``pred_label`` 1 = anomalous, at the
        model's threshold; ``pred_score`` is the model's normalised score, threshold 0.5).

    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ValueError(msg)
    runtime = OpenVINORuntime(model_path, device=device, precision=precision)
    output = fresh_directory(output_dir)
    heatmap_dir = output / "heatmaps"
    if heatmaps:
        heatmap_dir.mkdir()
    csv_path = output / "predictions.csv"
    skipped: list[Path] = []
    num_images = num_anomalous = 0
    with csv_path.open("x", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for batch in _batches(iter_scan_images(inputs, skipped), batch_size):
            images = np.stack([scan.image.transpose(2, 0, 1) for scan in batch])
            result = runtime.predict_batch(images)
            for scan, item in zip(batch, result.items, strict=True):
                label = bool(np.asarray(item.pred_label).item())
                heatmap = ""
                if heatmaps:
                    png = heatmap_dir / f"{num_images:05d}_{_safe_filename(scan.name)}.png"
                    with png.open("xb") as png_handle:
                        heatmap_figure(item, heatmap_size).save(png_handle, format="PNG")
                    heatmap = png.relative_to(output).as_posix()
                writer.writerow(
                    {
                        "name": scan.name,
                        "source": str(scan.source),
                        "pred_score": f"{float(np.asarray(item.pred_score).item()):.6f}",
                        "pred_label": int(label),
                        "decision": "anomalous" if label else "normal",
                        "heatmap": heatmap,
                    }
                )
                num_images += 1
                num_anomalous += label
            handle.flush()
    logger.info("Scored %d images (%d anomalous) -> %s", num_images, num_anomalous, csv_path)
    return PredictionRun(output, csv_path, num_images, num_anomalous, tuple(skipped))
