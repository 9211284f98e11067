"""Score new scans with an exported model: CSV of scores and decisions, heatmap PNGs.

Inputs can be image files (PNG 8/16-bit, JPEG, DICOM, 2-D NIfTI; read by content with
:func:`anomalib_sir.data.io.read_image`), volumes (3-D NIfTI, multi-frame DICOM; scored slice by slice with
:func:`anomalib_sir.data.io.read_volume_slices`), or folders of any of these (searched recursively, so a
folder of ``.dcm`` files, i.e. a DICOM series, is scored slice by slice). Non-image files in folders are
ignored; image files in folders that fail to read (a corrupt ``.png``, a truncated DICOM) are skipped with a
one-line warning each and recorded in the CSV with the decision ``unreadable``. A file named explicitly
must be readable.

Everything that can be checked up front is checked *before* the output folder is created: the model file
(a missing file, a ``.ckpt`` instead of an export, an ``.xml`` without its ``.bin``, a file OpenVINO cannot
read) and the inputs (missing paths, folders without images). Each problem is a one-line
:class:`~anomalib_sir.deploy.errors.DeployError` naming the file and the fix. A failure while scoring
removes the output folder the run created, so no half-written folder is left behind.

The exported model (OpenVINO ``.xml``, or ``.onnx`` run by OpenVINO) is run with anomalib's
``OpenVINOInferencer``; it holds the pre-processing and the threshold, so the decision is the model's own
``pred_label``. Each image gets a row in ``predictions.csv`` and, optionally, a heatmap PNG
(:func:`heatmap_figure`: image | anomaly map | overlay on one colour scale tied to the threshold, with the
name, score and decision written on it).

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
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_sir.data.io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    detect_format,
    read_image,
    read_volume_slices,
    volume_depth,
)

from .errors import DeployError
from .runtime import DEFAULT_OPENVINO_PRECISION, OpenVINORuntime

logger = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = ("name", "source", "pred_score", "pred_label", "decision", "heatmap", "error")
#: CSV decision of an image that matches none of the model's domains (the model gives it no score).
UNKNOWN_DOMAIN = "unknown domain"

#: Exported model files ``predict_scans`` runs (OpenVINO IR, or ONNX read by OpenVINO).
MODEL_SUFFIXES: tuple[str, ...] = (".xml", ".onnx")

#: The normalised threshold of anomalib's post-processors (SIR's and anomalib's own): maps and scores in
#: ``[0, 1]``, anomalous above 0.5.
NORMALISED_THRESHOLD = 0.5

_FORMATS_TEXT = "PNG, JPEG, BMP, TIFF, DICOM, NIfTI"


class InputNotFoundError(DeployError, FileNotFoundError):
    """An input path does not exist."""


class NoImagesError(DeployError, ValueError):
    """The inputs hold no image to score."""


class ModelFileError(DeployError, ValueError):
    """The model file is missing, is not an exported model, or cannot be loaded."""


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
class UnreadableFile:
    """A file inside an input folder that could not be read (skipped, recorded in the CSV)."""

    name: str
    source: Path
    reason: str


@dataclass(frozen=True)
class InputFile:
    """One file to read: its display name and whether the user named it (then it must be readable)."""

    path: Path
    name: str
    explicit: bool
    problem: str | None = None
    """Already known not to be an image (a folder file named like one): skipped without reading."""


@dataclass(frozen=True)
class PredictionRun:
    """What :func:`predict_scans` wrote."""

    output_dir: Path
    csv_path: Path
    num_images: int
    num_anomalous: int
    skipped: tuple[Path, ...]
    """Files that could not be read as images (rows with decision ``unreadable`` in the CSV)."""
    scores: tuple[float, ...] = ()
    """``pred_score`` of every scored image, in CSV order."""
    heatmap_dir: Path | None = None
    """Where the heatmap PNGs are (``None``: not written)."""
    num_unknown: int = 0
    """Images that matched none of the model's domains (decision ``unknown domain``, no score)."""

    def summary(self) -> str:
        """One line: counts, score range and where the results are.

        Example:
            >>> run = PredictionRun(Path("out"), Path("out/predictions.csv"), 3, 1, (), (0.2, 0.4, 0.9))
            >>> run.summary()
            '3 images scored: 1 anomalous, 2 normal (scores 0.200-0.900, median 0.400) -> out/predictions.csv'

        """
        normal = self.num_images - self.num_anomalous
        text = f"{self.num_images} images scored: {self.num_anomalous} anomalous, {normal} normal"
        if self.scores:
            low, mid, high = np.min(self.scores), np.median(self.scores), np.max(self.scores)
            text += f" (scores {low:.3f}-{high:.3f}, median {mid:.3f})"
        if self.num_unknown:
            text += f", {self.num_unknown} of no known domain"
        if self.skipped:
            text += f", {len(self.skipped)} unreadable files skipped"
        text += f" -> {self.csv_path}"
        if self.heatmap_dir is not None:
            text += f", heatmaps in {self.heatmap_dir}/"
        return text


# ------------------------------------------------------------------------------------------------- inputs


def _folder_files(root: Path) -> tuple[list[InputFile], int]:
    """Image files under ``root`` (recursive, by content; hidden entries skipped) and the count of others.

    A file whose name announces an image (``.png``, ``.dcm``, ...) but whose content is not one is kept,
    marked with its problem, so that it is reported and recorded instead of aborting the whole folder.
    """
    files: list[InputFile] = []
    others = 0
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        name = relative.as_posix()
        if detect_format(path) is not None:
            files.append(InputFile(path, name, explicit=False))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            problem = "named like an image, but its content is not a known image format"
            files.append(InputFile(path, name, explicit=False, problem=problem))
        else:
            others += 1
    return files, others


def plan_inputs(inputs: Iterable[str | Path]) -> list[InputFile]:
    """Every file to read for ``inputs`` (files and folders), checked without reading any image.

    Raises:
        InputNotFoundError: an input does not exist.
        ImageReadError: an input given explicitly as a file is not an image (judged by content).
        NoImagesError: no inputs, or a folder without a single image file.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> empty = Path(tempfile.mkdtemp())
        >>> plan_inputs([empty])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        anomalib_sir.deploy.predict.NoImagesError: no image files in ...

    """
    planned: list[InputFile] = []
    inputs = list(inputs)
    if not inputs:
        raise NoImagesError("no inputs given", fix="pass image/DICOM/NIfTI files or folders")
    for item in inputs:
        root = Path(item).expanduser()
        if root.is_file():
            if detect_format(root) is None:
                reason = f"not a recognised image format ({_FORMATS_TEXT}); pass scans, or a folder of them"
                raise ImageReadError(root, reason)
            planned.append(InputFile(root, root.name, explicit=True))
        elif root.is_dir():
            files, others = _folder_files(root)
            if not files:
                found = f"{others} other files ignored" if others else "the folder is empty"
                raise NoImagesError(
                    f"no image files in {root} (searched recursively for {_FORMATS_TEXT}; {found})",
                    fix="pass a folder that holds scans",
                )
            planned.extend(files)
        else:
            raise InputNotFoundError(f"input not found: {root}", fix="check the path (files and folders are accepted)")
    return planned


def _read_file(path: Path, name: str) -> Iterator[ScanImage]:
    """Every slice of a volume (3-D NIfTI, multi-frame DICOM), or the single image of any other file."""
    if volume_depth(path) > 1:
        for reference, image in read_volume_slices(path):
            yield ScanImage(name=f"{name}::{reference.rsplit('::', 1)[-1]}", source=path, image=image)
    else:
        yield ScanImage(name=name, source=path, image=read_image(path))


def _iter_planned(files: Iterable[InputFile]) -> Iterator[ScanImage | UnreadableFile]:
    """Images of each planned file; unreadable folder files as :class:`UnreadableFile` (with a warning)."""
    for file in files:
        if file.problem is None:
            try:
                yield from _read_file(file.path, file.name)
                continue
            except ImageReadError as error:
                if file.explicit:
                    fix = "repair or leave out this file (unreadable files inside folders are skipped instead)"
                    raise ImageReadError(file.path, f"{error.reason}; {fix}") from error
                reason = error.reason
        else:
            reason = file.problem
        logger.warning("Skipping unreadable file %s: %s", file.path, reason)
        yield UnreadableFile(file.name, file.path, reason)


def iter_scan_images(inputs: Iterable[str | Path], skipped: list[Path] | None = None) -> Iterator[ScanImage]:
    """Yield every 2-D image found in ``inputs`` (files or folders), one at a time.

    Folders are searched recursively, by content (hidden and non-image files ignored). Volumes yield one
    image per slice, named ``<file>::axis2:0007``. Files in folders that fail to read are skipped with a
    warning.

    Args:
        inputs: image/DICOM/NIfTI files and folders.
        skipped: if given, the files inside folders that failed to read are appended to it.

    Raises:
        InputNotFoundError: an input does not exist (a ``FileNotFoundError``).
        ImageReadError: an input given explicitly as a file cannot be read.
        NoImagesError: a folder holds no image file.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 6), np.uint8)).save(folder / "a.png")
        >>> [(scan.name, scan.image.shape) for scan in iter_scan_images([folder])]
        [('a.png', (4, 6, 3))]

    """
    for item in _iter_planned(plan_inputs(inputs)):
        if isinstance(item, UnreadableFile):
            if skipped is not None:
                skipped.append(item.source)
        else:
            yield item


# ------------------------------------------------------------------------------------------------- output


def _fresh_directory(path: str | Path) -> tuple[Path, bool]:
    """Like :func:`fresh_directory`; also says whether the folder was created (``False``: it existed, empty)."""
    path = Path(path).expanduser()
    candidate, index = path, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate, True
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate, False
        index += 1
        candidate = path.with_name(f"{path.name}-{index}")


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
    return _fresh_directory(path)[0]


def _remove_output(output: Path, created: bool) -> None:
    """Undo a failed run: remove the folder it created (or, if it existed empty, what the run put in it)."""
    if created:
        shutil.rmtree(output, ignore_errors=True)
        return
    for child in output.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _safe_filename(name: str) -> str:
    """``bad/007.png`` -> ``bad_007``; ``ct.nii.gz::axis2:0004`` -> ``ct.nii.gz_axis2_0004``."""
    name = re.sub(r"\.(png|jpe?g|bmp|tiff?|dcm|dicom)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:120] or "image"


def _batches(
    items: Iterable[ScanImage | UnreadableFile], batch_size: int
) -> Iterator[list[ScanImage] | UnreadableFile]:
    """Consecutive images of one shape, at most ``batch_size`` at a time; unreadable files in order, alone."""
    batch: list[ScanImage] = []
    for item in items:
        if isinstance(item, UnreadableFile):
            if batch:
                yield batch
                batch = []
            yield item
            continue
        if batch and (len(batch) == batch_size or batch[0].image.shape != item.image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------ heatmaps


def _short(text: str, limit: int) -> str:
    """``text``, its middle replaced by ``…`` when longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]


def draw_heatmap(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    score: float,
    anomalous: bool,
    name: str = "",
    size: int = 256,
    threshold: float = NORMALISED_THRESHOLD,
):
    """Draw the matplotlib ``Figure`` behind :func:`heatmap_figure` (same arguments) on an Agg canvas.

    Example:
        >>> import numpy as np
        >>> figure = draw_heatmap(np.zeros((8, 8, 3)), np.full((4, 4), 0.2), 0.42, False, "a.png", size=64)
        >>> figure.axes[1].images[0].get_clim(), figure.get_suptitle()
        ((0.0, 1.0), 'a.png   score 0.420 (threshold 0.5)   normal')

    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    values = np.asarray(anomaly_map, dtype=np.float32).squeeze()
    if values.ndim != 2:
        msg = f"expected a 2-D anomaly map, got shape {np.asarray(anomaly_map).shape}"
        raise ValueError(msg)
    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    cmap = colormaps["inferno"]

    dpi = 100
    panel = size / dpi
    aspect = height / width
    panel_w, panel_h = (panel, panel * aspect) if width >= height else (panel / aspect, panel)
    figure = Figure(figsize=(3 * panel_w + 1.0, panel_h + 0.75), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    roomy = panel_w * dpi >= 150
    titles = ("image", "anomaly map", "overlay (above threshold)") if roomy else ("image", "map", "overlay")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title, fontsize=8)
        axis.set_axis_off()
    axes[0].imshow(image, extent=extent)
    mapped = axes[1].imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, extent=extent, interpolation="bilinear")
    axes[2].imshow(image.mean(axis=-1), cmap="gray", vmin=0.0, vmax=1.0, extent=extent)
    above = np.clip((values - threshold) / max(1.0 - threshold, 1e-6), 0.0, 1.0)
    overlay = cmap(np.clip(values, 0.0, 1.0))
    overlay[..., 3] = 0.75 * above
    axes[2].imshow(overlay, extent=extent, interpolation="bilinear")
    if values.max() > threshold > values.min():
        axes[2].contour(values, levels=[threshold], colors="cyan", linewidths=0.8, extent=extent, origin="upper")
    outside = values.min() < 0.0 or values.max() > 1.0
    colorbar = figure.colorbar(mapped, ax=list(axes), shrink=0.9, extend="both" if outside else "neither")
    colorbar.set_ticks([0.0, 0.25, threshold, 0.75, 1.0])
    colorbar.set_ticklabels(["0", "0.25", f"{threshold:g} threshold", "0.75", "1"], fontsize=7)
    colorbar.ax.axhline(threshold, color="cyan", linewidth=1.5)
    decision = "ANOMALOUS" if anomalous else "normal"
    verdict = f"score {score:.3f} (threshold {threshold:g})   {decision}"
    title = figure.suptitle(verdict, fontsize=9, color="firebrick" if anomalous else "black")
    _fit_title(figure, title, name, verdict)
    figure.canvas.draw()
    return figure


def _fit_title(figure, title, name: str, verdict: str) -> None:
    """Put ``name   verdict`` in ``title``, shortening the name (then wrapping) until it fits the figure."""
    renderer = figure.canvas.get_renderer()
    room = 0.96 * figure.bbox.width
    limit = len(name)
    while name:
        title.set_text(f"{_short(name, limit)}   {verdict}")
        if title.get_window_extent(renderer).width <= room or limit <= 12:
            break
        limit = max(12, int(limit * 0.8))
    if title.get_window_extent(renderer).width <= room or not name:
        return
    limit = len(name)  # two lines: the name gets a line of its own
    while True:
        title.set_text(f"{_short(name, limit)}\n{verdict}")
        if title.get_window_extent(renderer).width <= room or limit <= 12:
            return
        limit = max(12, int(limit * 0.8))


def heatmap_figure(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    score: float,
    anomalous: bool,
    name: str = "",
    size: int = 256,
    threshold: float = NORMALISED_THRESHOLD,
) -> Image.Image:
    """Image | anomaly map | overlay, on one fixed colour scale (0..1, ``threshold`` marked on the colour bar).

    The colour scale is the same for every image (the model's normalised map, threshold at 0.5), so a
    normal image looks calm and only regions above the threshold are hot; the overlay colours only those
    regions and outlines them. The title carries the name, the score and the decision; the layout is
    constrained, so no title is clipped.

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``) in ``[0, 1]``.
        anomaly_map: the model's normalised map (any resolution; drawn over the image's extent).
        score: the image's normalised score.
        anomalous: the model's decision.
        name: shown in the title.
        size: each panel's longest side, pixels.
        threshold: the normalised threshold (0.5 for anomalib's post-processors).

    Example:
        >>> import numpy as np
        >>> figure = heatmap_figure(np.zeros((40, 80, 3)), np.zeros((32, 32)), 0.42, False, "a.png", size=128)
        >>> figure.mode, figure.width > 2 * figure.height
        ('RGB', True)

    """
    figure = draw_heatmap(image, anomaly_map, score, anomalous, name, size, threshold)
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


# ------------------------------------------------------------------------------------------------- models


def check_model_file(model_path: str | Path) -> Path:
    """Check that ``model_path`` is an exported model file predict can run (before loading it).

    Raises:
        ModelFileError: missing, a training checkpoint, an unknown type, or an ``.xml`` without its ``.bin``.

    """
    path = Path(model_path).expanduser()
    export_fix = "export a checkpoint with `anomalib-sir export --ckpt model.ckpt` and pass its model.xml"
    if path.suffix.lower() == ".bin" and path.with_suffix(".xml").is_file():
        path = path.with_suffix(".xml")
    if not path.exists():
        raise ModelFileError(f"exported model not found: {path}", fix=export_fix)
    if path.is_dir():
        found = sorted(path.rglob("model.xml")) or sorted(path.rglob("*.xml")) + sorted(path.rglob("*.onnx"))
        hint = f"did you mean {found[0]}?" if found else export_fix
        raise ModelFileError(f"{path} is a folder, not an exported model file", fix=hint)
    if path.suffix.lower() == ".ckpt":
        from .checkpoint import inspect_checkpoint

        try:
            model_name = inspect_checkpoint(path).model_name
        except DeployError:
            model_name = None
        what = f"a {model_name} training checkpoint" if model_name else "a training checkpoint"
        fix = (
            f"export it first: anomalib-sir export --ckpt {path}"
            if model_name in (None, "Sir")
            else f"export it first with anomalib (anomalib export --model {model_name} --ckpt_path {path} "
            "--export_type openvino), then pass the model.xml"
        )
        raise ModelFileError(f"{path} is {what}, not an exported model (.xml/.onnx)", fix=fix)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelFileError(f"{path} is not an exported model (expected model.xml or model.onnx)", fix=export_fix)
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelFileError(
            f"{path}: its weights file {path.with_suffix('.bin').name} is missing next to it",
            fix="copy the .xml and .bin together",
        )
    return path


def _open_runtime(path: Path, device: str, precision: str | None) -> OpenVINORuntime:
    try:
        return OpenVINORuntime(path, device=device, precision=precision)
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[-1] if lines else type(error).__name__
        raise ModelFileError(
            f"OpenVINO cannot load {path} on {device} ({detail[:200]})",
            fix="re-export the model (`anomalib-sir export`), or check --device",
        ) from error


# ---------------------------------------------------------------------------------------------- predict


def _progress(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="file",
        desc="scoring",
        disable=None if enabled is None else not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
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
    progress: bool | None = None,
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
        progress: show a progress bar on stderr (``None``: only when stderr is a terminal).

    Returns:
        What was written; CSV columns are :data:`CSV_COLUMNS` (``pred_label`` 1 = anomalous, at the
        model's threshold; ``pred_score`` is the model's normalised score, threshold 0.5; unreadable files
        have the decision ``unreadable``, no score, and the reason in ``error``; images that match none of a
        domain model's domains have the decision ``unknown domain`` and no score).

    Raises:
        DeployError: a problem with the model file or the inputs (before anything is written), or no
            image could be read (the output folder is removed again).
        ImageReadError: a file named explicitly cannot be read (the output folder is removed again).

    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ValueError(msg)
    model_file = check_model_file(model_path)
    planned = plan_inputs(inputs)
    runtime = _open_runtime(model_file, device, precision)
    output, created = _fresh_directory(output_dir)
    try:
        run = _score(runtime, planned, output, batch_size, heatmaps, heatmap_size, progress)
    except BaseException:
        _remove_output(output, created)
        raise
    if run.num_images == 0 and not run.num_unknown:
        _remove_output(output, created)
        first = f" (e.g. {run.skipped[0]})" if run.skipped else ""
        raise NoImagesError(
            f"none of the {len(planned)} image files could be read{first}",
            fix="see the warnings above for the reason of each file",
        )
    logger.info("%s", run.summary())
    return run


def _score(
    runtime: OpenVINORuntime,
    planned: list[InputFile],
    output: Path,
    batch_size: int,
    heatmaps: bool,
    heatmap_size: int,
    progress: bool | None,
) -> PredictionRun:
    from tqdm.contrib.logging import logging_redirect_tqdm

    heatmap_dir = output / "heatmaps"
    if heatmaps:
        heatmap_dir.mkdir()
    csv_path = output / "predictions.csv"
    skipped: list[Path] = []
    scores: list[float] = []
    num_anomalous = num_unknown = 0
    with csv_path.open("x", newline="") as handle, _progress(len(planned), progress) as bar, logging_redirect_tqdm():
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()

        def files() -> Iterator[InputFile]:
            for file in planned:
                yield file
                bar.update(1)

        for batch in _batches(_iter_planned(files()), batch_size):
            if isinstance(batch, UnreadableFile):
                skipped.append(batch.source)
                writer.writerow(
                    {"name": batch.name, "source": str(batch.source), "decision": "unreadable", "error": batch.reason}
                )
                continue
            images = np.stack([scan.image.transpose(2, 0, 1) for scan in batch])
            result = runtime.predict_batch(images)
            for scan, item in zip(batch, result.items, strict=True):
                label = bool(np.asarray(item.pred_label).item())
                score = float(np.asarray(item.pred_score).item())
                if not np.isfinite(score):  # the model's domains route it nowhere (see Sir.add_domain)
                    num_unknown += 1
                    error = "farther from every domain of the model than its references; add one with add-domain"
                    row = {"name": scan.name, "source": str(scan.source), "decision": UNKNOWN_DOMAIN, "error": error}
                    writer.writerow(row)
                    continue
                heatmap = ""
                if heatmaps:
                    png = heatmap_dir / f"{len(scores):05d}_{_safe_filename(scan.name)}.png"
                    figure = heatmap_figure(scan.image, item.anomaly_map, score, label, scan.name, heatmap_size)
                    with png.open("xb") as png_handle:
                        figure.save(png_handle, format="PNG")
                    heatmap = png.relative_to(output).as_posix()
                writer.writerow(
                    {
                        "name": scan.name,
                        "source": str(scan.source),
                        "pred_score": f"{score:.6f}",
                        "pred_label": int(label),
                        "decision": "anomalous" if label else "normal",
                        "heatmap": heatmap,
                        "error": "",
                    }
                )
                scores.append(score)
                num_anomalous += label
            handle.flush()
    return PredictionRun(
        output_dir=output,
        csv_path=csv_path,
        num_images=len(scores),
        num_anomalous=num_anomalous,
        skipped=tuple(skipped),
        scores=tuple(scores),
        heatmap_dir=heatmap_dir if heatmaps else None,
        num_unknown=num_unknown,
    )
