"""Read medical images by content: PNG/JPEG/BMP/TIFF (8/16-bit, gray/RGB/RGBA), DICOM and NIfTI.

Every reader returns the same thing: a ``float32`` array of shape ``(H, W, 3)`` with values in ``[0, 1]``,
so grayscale, RGB, RGBA, 16-bit, DICOM and NIfTI images all enter a model the same way.

The file format is decided by the file's *content* (its magic bytes), never by its extension, so JPEGs
with upper-case or missing extensions (as in BrainMRI) are read like any other JPEG. Anything that
cannot be read raises :class:`ImageReadError`, a ``ValueError`` naming the file and the problem.

Conversion rules:

* 8/16/32-bit integer rasters are scaled by the maximum of their integer type (``/255``, ``/65535``),
  floating-point rasters by their own min/max.
* Grayscale is repeated to three channels; alpha is composited onto black; palettes are expanded.
* DICOM: ``RescaleSlope``/``RescaleIntercept`` are applied, then the file's first
  ``WindowCenter``/``WindowWidth`` if present, else a percentile window (0.5 %–99.5 %);
  ``MONOCHROME1`` is inverted so that bright means dense, as in ``MONOCHROME2``.
* NIfTI: 2-D images (or volumes with a single slice) get a percentile window. For 3-D volumes use
  :func:`read_volume_slices`, or a *slice reference* made by :func:`slice_reference`
  (``"brain.nii.gz::axis2:0040"``) wherever an image path is expected; the window is computed once per
  volume so every slice of a volume shares it. Multi-frame DICOMs are volumes along axis 0.
* Size: an image whose longer side exceeds :data:`MAX_IMAGE_SIDE` (2048 px) is downscaled at read time
  (area-preserving box resampling, aspect ratio kept; JPEGs are decoded at reduced scale) so memory stays
  bounded; masks are downscaled to the same size. An image whose shorter side is below
  :data:`MIN_IMAGE_SIDE` (32 px) is read as is, with one warning per file.

:func:`check_image_file` finds, from headers only, the problems that :func:`read_image` /
:func:`read_mask` would raise (corrupt or truncated files, DICOMs without pixel data, 4-D NIfTI ...); the
datamodules run it on every file of every split before training (:func:`check_image_files`).

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)).save(folder / "scan", format="PNG")  # no extension
    >>> image = read_image(folder / "scan")
    >>> image.shape, image.dtype, float(image.max())
    ((4, 6, 3), dtype('float32'), 1.0)
    >>> detect_format(folder / "scan")
    'png'

"""

from __future__ import annotations

import functools
import gzip
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpeg", "bmp", "tiff", "gif", "webp", "dicom", "nifti"]

#: File extensions that announce an image; a file with one of them whose content is not an image is an error.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom", ".nii", ".gz"}
)

#: Percentile window used when a file carries no window of its own.
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Longer side (pixels) above which :func:`read_image` / :func:`read_mask` downscale at read time.
MAX_IMAGE_SIDE: int = 2048
#: Shorter side (pixels) below which :func:`read_image` warns (once per file) that the image is tiny.
MIN_IMAGE_SIDE: int = 32

_WARNED_SMALL: set[str] = set()
_NOT_AN_IMAGE = "file name says image, but its content is not a known image format"

_SLICE_REF = re.compile(r"^(?P<path>.+)::axis(?P<axis>\d+):(?P<index>\d+)$")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason.

    Example:
        >>> str(ImageReadError("/data/x.png", "not an image"))
        '/data/x.png: not an image'

    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# --------------------------------------------------------------------------------------------------- detection


def _nifti_header_ok(header: bytes) -> bool:
    """Whether ``header`` starts like a NIfTI-1/2 header (size field and magic string)."""
    if len(header) >= 348:
        size = int.from_bytes(header[:4], "little")
        if size == 348 or int.from_bytes(header[:4], "big") == 348:
            return header[344:348] in (b"n+1\x00", b"ni1\x00")
    if len(header) >= 8 and header[4:8] in (b"n+2\x00", b"ni2\x00"):
        size = int.from_bytes(header[:4], "little")
        return size == 540 or int.from_bytes(header[:4], "big") == 540
    return False


def detect_format(path: str | Path) -> ImageFormat | None:
    """Image format of a file from its magic bytes (``None``: not a recognised image).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> text = Path(tempfile.mkdtemp()) / "labels.csv"
        >>> _ = text.write_text("id,label")
        >>> detect_format(text) is None
        True

    """
    path = Path(path)
    if _SLICE_REF.match(str(path)):
        return detect_format(_SLICE_REF.match(str(path))["path"])  # type: ignore[index]
    try:
        with path.open("rb") as file:
            head = file.read(352)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[128:132] == b"DICM":
        return "dicom"
    if _nifti_header_ok(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as file:
                inner = file.read(352)
        except (OSError, EOFError):
            return None
        return "nifti" if _nifti_header_ok(inner) else None
    if path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom" if _is_raw_dicom(path) else None  # DICOM written without the 128-byte preamble
    return None


def _is_raw_dicom(path: Path) -> bool:
    """Whether a preamble-less file parses as DICOM with pixel data."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=False)
    except Exception:
        return False
    return "PixelData" in dataset


def is_readable_image(path: str | Path) -> bool:
    """Whether ``path`` (a file or a slice reference) is an image this module reads, judged by content.

    Example:
        >>> is_readable_image("/no/such/file.png")
        False

    """
    return detect_format(path) is not None


def looks_like_image_name(path: str | Path) -> bool:
    """Whether the file *name* announces an image (an image extension, or none at all, as in BrainMRI).

    Example:
        >>> looks_like_image_name("scan.PNG"), looks_like_image_name("scan"), looks_like_image_name("a.csv")
        (True, True, False)

    """
    return Path(path).suffix.lower() in IMAGE_SUFFIXES or Path(path).suffix == ""


def list_images(
    folder: str | Path,
    recursive: bool = True,
    exclude_dirs: tuple[str, ...] = (),
    expand_volumes: bool = False,
    axis: int = 2,
    keep_unreadable: bool = False,
) -> list[str]:
    """Sorted image files under ``folder``, chosen by content.

    Hidden files/folders and files whose name does not announce an image (``labels.csv``, ``Thumbs.db``)
    are skipped when their content is not an image. A file whose *name* announces an image
    (``.png``, ``.dcm``, no extension, ...) but whose content is not one raises :class:`ImageReadError`,
    so a corrupt file is reported when the dataset is built, not halfway through training; with
    ``keep_unreadable`` it is listed instead, so that :func:`check_image_files` reports it together with
    every other bad file (the datamodules do this).

    Args:
        folder: folder to search.
        recursive: also search sub-folders.
        exclude_dirs: names of sub-folders to skip (e.g. mask folders ``("label", "ground_truth")``).
        expand_volumes: replace each 3-D NIfTI / multi-frame DICOM by one slice reference per slice.
        axis: slicing axis for ``expand_volumes``.
        keep_unreadable: list files named like images whose content is not an image, instead of raising.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ImageReadError: a file named like an image is not one (unless ``keep_unreadable``).

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / "IMG1.JPG")
        >>> _ = (folder / "notes.txt").write_text("hello")
        >>> [Path(p).name for p in list_images(folder)]
        ['IMG1.JPG']

    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"Image folder not found: {folder}"
        raise FileNotFoundError(msg)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found: list[str] = []
    for path in sorted(candidates):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or any(part in exclude_dirs for part in relative[:-1]):
            continue
        if not path.is_file():
            continue
        kind = detect_format(path)
        if kind is None:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                if keep_unreadable:
                    found.append(str(path))
                    continue
                raise ImageReadError(path, _NOT_AN_IMAGE)
            continue
        if expand_volumes and kind in ("nifti", "dicom"):
            try:
                depth = volume_depth(path, axis=axis)
            except ImageReadError:
                if not keep_unreadable:
                    raise
                depth = 1  # reported by check_image_files
            if depth > 1:
                found.extend(slice_reference(path, index, axis=axis) for index in range(depth))
                continue
        found.append(str(path))
    return found


# --------------------------------------------------------------------------------------------------- conversion


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """``HxW`` or ``HxWxC`` in ``[0, 1]`` → ``HxWx3`` float32 (gray repeated, alpha dropped)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 2:  # gray + alpha, already composited
        array = np.repeat(array[..., :1], 3, axis=-1)
    elif array.shape[-1] >= 4:
        array = array[..., :3]
    return np.ascontiguousarray(array, dtype=np.float32)


def _scale_by_dtype(array: np.ndarray) -> np.ndarray:
    """Integer arrays divided by their type's maximum; floats min-max scaled per image."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min < 0:  # signed (e.g. PIL mode "I"): scale by the smallest unsigned range that holds the data
            top = float(array.max(initial=0))
            bound = 255.0 if top <= 255 else 65535.0 if top <= 65535 else float(info.max)
            return np.clip(array.astype(np.float32) / bound, 0.0, 1.0)
        return array.astype(np.float32) / float(info.max)
    return _minmax(array.astype(np.float32))


def _minmax(array: np.ndarray) -> np.ndarray:
    """Min-max scale to ``[0, 1]`` (a constant image becomes zeros)."""
    finite = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min(initial=0.0)), float(finite.max(initial=0.0))
    if high <= low:
        return np.zeros_like(finite)
    return (finite - low) / (high - low)


def apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear intensity window: ``center ± width/2`` maps to ``[0, 1]`` (clipped outside).

    Example:
        >>> apply_window(np.array([0.0, 50.0, 100.0, 200.0]), center=50.0, width=100.0).tolist()
        [0.0, 0.5, 1.0, 1.0]

    """
    width = max(float(width), 1e-6)
    low = float(center) - width / 2.0
    return np.clip((array.astype(np.float32) - low) / width, 0.0, 1.0).astype(np.float32)


def percentile_window(array: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """``(center, width)`` of a window spanning the given percentiles of the finite values.

    Example:
        >>> percentile_window(np.arange(101.0), (0.0, 100.0))
        (50.0, 100.0)

    """
    values = array[np.isfinite(array)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high <= low:  # (nearly) constant image: fall back to the full range
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return low, 1.0
    return (low + high) / 2.0, high - low


# --------------------------------------------------------------------------------------------------- raster (PIL)


def _target_size(height: int, width: int) -> tuple[int, int] | None:
    """``(height, width)`` to downscale to so the longer side is :data:`MAX_IMAGE_SIDE` (``None``: small enough)."""
    longest = max(height, width)
    if longest <= MAX_IMAGE_SIDE:
        return None
    scale = MAX_IMAGE_SIDE / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def _log_downscale(path: str | Path, original: tuple[int, int], target: tuple[int, int]) -> None:
    logger.debug(
        "Downscaled %s from %dx%d to %dx%d px at read time (longer side above MAX_IMAGE_SIDE=%d)",
        path,
        original[1],
        original[0],
        target[1],
        target[0],
        MAX_IMAGE_SIDE,
    )


def _downscale(image: np.ndarray, path: str | Path) -> np.ndarray:
    """Area-preserving (box) downscale of an ``HxWxC`` float image whose longer side is above the limit."""
    target = _target_size(*image.shape[:2])
    if target is None:
        return image
    size = (target[1], target[0])
    first = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., 0])).resize(size, Image.Resampling.BOX))
    channels = [first]
    for channel in range(1, image.shape[-1]):
        if np.array_equal(image[..., channel], image[..., 0]):  # grayscale repeated: resample once
            channels.append(first)
        else:
            plane = np.ascontiguousarray(image[..., channel])
            channels.append(np.asarray(Image.fromarray(plane).resize(size, Image.Resampling.BOX)))
    _log_downscale(path, image.shape[:2], target)
    return np.ascontiguousarray(np.stack(channels, axis=-1), dtype=np.float32)


def _read_raster(path: Path) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF/WEBP through PIL, any mode and bit depth (downscaled above the size limit)."""
    try:
        with Image.open(path) as image:
            original = (image.height, image.width)
            target = _target_size(*original)
            if target is not None and image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale (not below target)
                image.draft(image.mode, (target[1], target[0]))
            if target is not None and image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees
                original, target = original[::-1], target[::-1]
            image.load()
            image = ImageOps.exif_transpose(image) or image
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                mode = image.mode
            elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
                image = image.convert("RGBA" if mode == "PA" else "RGB")
                mode = image.mode
            sixteen_bit = mode.startswith("I;16")
            if target is not None:
                if sixteen_bit and mode != "I;16":
                    image = image.convert("I")
                image = image.resize((target[1], target[0]), Image.Resampling.BOX)
                _log_downscale(path, original, target)
            array = np.asarray(image)
    except UnidentifiedImageError as error:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from error

    if sixteen_bit:
        array = array.astype(np.uint16)
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # composite colour over black with alpha
        scaled = _scale_by_dtype(array)
        colour, alpha = scaled[..., :-1], scaled[..., -1:]
        return _to_rgb(colour * alpha)
    return _to_rgb(_scale_by_dtype(array))


# --------------------------------------------------------------------------------------------------- DICOM


def _dicom_dataset(path: Path) -> Dataset:
    import pydicom

    try:
        return pydicom.dcmread(path, force=True)
    except Exception as error:
        raise ImageReadError(path, f"not a readable DICOM file ({error})") from error


def _dicom_pixels(path: Path) -> tuple[np.ndarray, Dataset]:
    """Pixel array (frames, H, W[, 3]) after modality rescale, plus the dataset."""
    dataset = _dicom_dataset(path)
    if "PixelData" not in dataset:
        raise ImageReadError(path, "DICOM file has no pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({error})") from error
    samples = int(getattr(dataset, "SamplesPerPixel", 1))
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if samples == 1:
        pixels = pixels.reshape((frames, *pixels.shape[-2:]))
    else:
        pixels = pixels.reshape((frames, *pixels.shape[-3:]))
    return pixels, dataset


def _dicom_rescale(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * slope + intercept


def _first(value: object) -> float | None:
    """First number of a (possibly multi-valued) DICOM element."""
    if value is None:
        return None
    try:
        return float(value[0]) if not isinstance(value, str | bytes) and hasattr(value, "__getitem__") else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _dicom_window(values: np.ndarray, dataset: Dataset) -> tuple[float, float]:
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return center, width
    return percentile_window(values)


def _dicom_to_images(path: Path) -> list[np.ndarray]:
    """Every frame of a DICOM file as ``HxWx3`` float32 in ``[0, 1]`` (one window for all frames)."""
    pixels, dataset = _dicom_pixels(path)
    samples = int(getattr(dataset, "SamplesPerPixel", 1))
    if samples > 1:  # colour DICOM (ultrasound, dermoscopy, ...): scale by the stored bit depth
        bits = int(getattr(dataset, "BitsStored", 8) or 8)
        return [_to_rgb(np.clip(frame.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)) for frame in pixels]
    values = _dicom_rescale(pixels, dataset)
    center, width = _dicom_window(values, dataset)
    windowed = apply_window(values, center, width)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        windowed = 1.0 - windowed
    return [_to_rgb(frame) for frame in windowed]


# --------------------------------------------------------------------------------------------------- NIfTI


def _nifti_array(path: Path) -> np.ndarray:
    """Load the NIfTI data array with trailing singleton dimensions removed."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise ImageReadError(path, f"not a readable NIfTI file ({error})") from error
    if data.dtype.names:  # RGB NIfTI stored as a structured dtype
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
        data = data.reshape(*[s for s in data.shape[:-1] if s != 1], data.shape[-1])
        return data
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


#: What to do with a NIfTI file of more than three dimensions (fMRI, DWI, a time series ...).
FOUR_D_FIX = (
    "SIR reads 2-D images and 3-D volumes only: keep one volume / time point per file, e.g. with nibabel: "
    "img = nib.load(f); nib.save(nib.Nifti1Image(img.dataobj[..., 0], img.affine), 'scan_t0.nii.gz'); "
    "then use that file (a datamodule cuts a 3-D volume into slices with --data.expand_volumes true)"
)
#: What to do with a 3-D NIfTI volume given where a 2-D image is expected.
THREE_D_FIX = (
    "a volume is used slice by slice: in a datamodule set expand_volumes (CLI: --data.expand_volumes true, "
    "slicing axis --data.slice_axis); `anomalib-sir predict` scores volumes slice by slice on its own; "
    "in Python use read_volume_slices() or a slice reference (slice_reference())"
)


def _nifti_dims_reason(shape: tuple[int, ...]) -> str:
    """Reason text for a NIfTI array that is neither a 2-D image nor a 3-D volume."""
    if len(shape) >= 4:
        return f"{len(shape)}-D NIfTI of shape {shape}: {FOUR_D_FIX}"
    return f"NIfTI of shape {shape}: expected a 2-D image or a 3-D volume"


@functools.lru_cache(maxsize=32)
def _volume_window(path: str, mtime: float) -> tuple[float, float]:
    """Percentile window of a whole volume (cached per file version)."""
    del mtime
    data = _nifti_array(Path(path))
    return percentile_window(np.asarray(data, dtype=np.float32))


def _nifti_slices(path: Path, axis: int) -> Iterator[tuple[int, np.ndarray]]:
    data = _nifti_array(path)
    if data.dtype.names is None and data.ndim == 2:
        data = data[..., None]
        axis = 2
    if data.ndim != 3:
        raise ImageReadError(path, _nifti_dims_reason(tuple(data.shape)))
    if not 0 <= axis < 3:
        raise ImageReadError(path, f"slice axis must be 0, 1 or 2, got {axis}")
    center, width = _volume_window(str(path), path.stat().st_mtime)
    for index in range(data.shape[axis]):
        plane = np.take(data, index, axis=axis)
        yield index, _to_rgb(apply_window(np.asarray(plane, dtype=np.float32), center, width))


# --------------------------------------------------------------------------------------------------- public API


def slice_reference(path: str | Path, index: int, axis: int = 2) -> str:
    """Name one slice of a volume with a string usable wherever an image path is (``read_image``, datasets).

    Example:
        >>> slice_reference("/data/brain.nii.gz", 40)
        '/data/brain.nii.gz::axis2:0040'

    """
    return f"{path}::axis{axis}:{index:04d}"


def parse_slice_reference(reference: str | Path) -> tuple[Path, int, int] | None:
    """``(path, axis, index)`` of a slice reference, or ``None`` for a plain path.

    Example:
        >>> parse_slice_reference("/data/brain.nii.gz::axis2:0040")
        (PosixPath('/data/brain.nii.gz'), 2, 40)
        >>> parse_slice_reference("/data/brain.png") is None
        True

    """
    match = _SLICE_REF.match(str(reference))
    if match is None:
        return None
    return Path(match["path"]), int(match["axis"]), int(match["index"])


def image_exists(path: str | Path) -> bool:
    """Whether a plain path or the volume behind a slice reference exists.

    Example:
        >>> image_exists("/no/such.nii::axis2:0001")
        False

    """
    parsed = parse_slice_reference(path)
    return (parsed[0] if parsed else Path(path)).is_file()


def volume_depth(path: str | Path, axis: int = 2) -> int:
    """Count the slices along ``axis`` of a NIfTI volume, or frames of a DICOM (1 for 2-D images).

    Example:
        >>> import numpy as np, nibabel as nib, tempfile
        >>> from pathlib import Path
        >>> file = Path(tempfile.mkdtemp()) / "vol.nii.gz"
        >>> nib.save(nib.Nifti1Image(np.zeros((8, 9, 5), dtype=np.int16), np.eye(4)), file)
        >>> volume_depth(file), volume_depth(file, axis=0)
        (5, 8)

    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "nifti":
        import nibabel as nib

        try:
            shape = tuple(s for s in nib.load(str(path)).shape)
        except Exception as error:
            raise ImageReadError(path, f"not a readable NIfTI file ({error})") from error
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        return int(shape[axis]) if len(shape) == 3 else 1
    if kind == "dicom":
        import pydicom

        try:
            dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception as error:
            raise ImageReadError(path, f"not a readable DICOM file ({error})") from error
        return int(getattr(dataset, "NumberOfFrames", 1) or 1)
    return 1


def read_volume_slices(path: str | Path, axis: int = 2) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(slice reference, HxWx3 float32 image)`` for every slice of a volume.

    NIfTI volumes are cut along ``axis`` with one intensity window for the whole volume; a multi-frame
    DICOM yields its frames (``axis`` is ignored). A 2-D file yields a single slice. The slice reference
    (see :func:`slice_reference`) can be given back to :func:`read_image`.

    Example:
        >>> import numpy as np, nibabel as nib, tempfile
        >>> from pathlib import Path
        >>> file = Path(tempfile.mkdtemp()) / "vol.nii"
        >>> nib.save(nib.Nifti1Image(np.random.rand(6, 7, 3).astype(np.float32), np.eye(4)), file)
        >>> [(name.rsplit("::", 1)[1], image.shape) for name, image in read_volume_slices(file)]
        [('axis2:0000', (6, 7, 3)), ('axis2:0001', (6, 7, 3)), ('axis2:0002', (6, 7, 3))]

    """
    path = Path(path)
    kind = detect_format(path)
    if kind == "nifti":
        for index, image in _nifti_slices(path, axis):
            yield slice_reference(path, index, axis), _downscale(image, path)
    elif kind == "dicom":
        for index, image in enumerate(_dicom_to_images(path)):
            yield slice_reference(path, index, 0), _downscale(image, path)
    else:
        yield slice_reference(path, 0, axis), read_image(path)


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image (or a volume slice reference) as ``HxWx3`` float32 in ``[0, 1]``.

    The format is detected from the content. 2-D NIfTI images are windowed at their percentiles; a 3-D
    NIfTI *file* is refused (pick a slice with a slice reference or :func:`read_volume_slices`, or let a
    datamodule cut it with ``expand_volumes``), and so is a 4-D NIfTI (keep one volume / time point per
    file); for a multi-frame DICOM the middle frame is returned.

    Size limits (module constants, adjustable):

    * **Very large images are downscaled at read time**: if the longer side exceeds :data:`MAX_IMAGE_SIDE`
      (2048 px) the image is resampled with an area-preserving box filter so that side is 2048 px (aspect
      ratio kept; a large JPEG is first decoded at 1/2, 1/4 or 1/8 scale), and a debug line is logged. The
      model resizes every image to its small input size anyway, so this only bounds time and memory (a
      6000x6000 PNG no longer becomes a 432 MB float array). :func:`read_mask` downscales masks to the same
      size.
    * **Tiny images are read as they are, with a warning**: if the shorter side is below
      :data:`MIN_IMAGE_SIDE` (32 px) one warning per file names the file and its size, because the model
      upsamples it to its input size and its score says little.

    Raises:
        ImageReadError: missing file, unknown format, corrupt data, or a 3-D/4-D volume given as a plain path.

    Example:
        >>> import numpy as np, pydicom, tempfile
        >>> from pathlib import Path
        >>> from pydicom.dataset import FileDataset, FileMetaDataset
        >>> from pydicom.uid import ExplicitVRLittleEndian, generate_uid
        >>> meta = FileMetaDataset()
        >>> meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, generate_uid()
        >>> meta.MediaStorageSOPInstanceUID = generate_uid()
        >>> ds = FileDataset("x", {}, file_meta=meta, preamble=bytes(128))
        >>> ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 2, 1, "MONOCHROME2"
        >>> ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        >>> ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1000, 0, 200
        >>> ds.PixelData = np.array([[900, 1000], [1100, 1200]], dtype=np.uint16).tobytes()
        >>> file = Path(tempfile.mkdtemp()) / "ct.dcm"
        >>> ds.save_as(file, enforce_file_format=True)
        >>> read_image(file)[..., 0].tolist()
        [[0.0, 0.5], [1.0, 1.0]]

    """
    image = _downscale(_read_any(path), path)
    _warn_if_small(path, image.shape[:2])
    return image


def _warn_if_small(path: str | Path, size: tuple[int, int]) -> None:
    """Warn once per file when an image is far smaller than a model input."""
    if min(size) >= MIN_IMAGE_SIDE:
        return
    parsed = parse_slice_reference(path)
    key = str(parsed[0] if parsed else path)
    if key in _WARNED_SMALL:
        return
    _WARNED_SMALL.add(key)
    logger.warning(
        "%s is only %dx%d px (shorter side below %d px): it is upsampled to the model input size, so its "
        "anomaly score says little; use images of at least %d px",
        path,
        size[1],
        size[0],
        MIN_IMAGE_SIDE,
        MIN_IMAGE_SIDE,
    )


def _read_any(path: str | Path) -> np.ndarray:
    """:func:`read_image` without the size handling (rasters are still downscaled while decoding)."""
    parsed = parse_slice_reference(path)
    if parsed is not None:
        volume, axis, index = parsed
        if not volume.is_file():
            raise ImageReadError(path, "volume file not found")
        kind = detect_format(volume)
        if kind == "nifti":
            data = _nifti_array(volume)
            if data.ndim == 2:
                data = data[..., None]
            if data.ndim > 3:
                raise ImageReadError(path, _nifti_dims_reason(tuple(data.shape)))
            if data.ndim != 3 or not 0 <= axis < 3 or not 0 <= index < data.shape[axis]:
                raise ImageReadError(path, f"no slice {index} along axis {axis} in volume of shape {data.shape}")
            center, width = _volume_window(str(volume), volume.stat().st_mtime)
            plane = np.asarray(np.take(data, index, axis=axis), dtype=np.float32)
            return _to_rgb(apply_window(plane, center, width))
        if kind == "dicom":
            frames = _dicom_to_images(volume)
            if not 0 <= index < len(frames):
                raise ImageReadError(path, f"no frame {index} in DICOM with {len(frames)} frames")
            return frames[index]
        if index == 0:
            return _read_any(volume)
        raise ImageReadError(path, "slice reference to a file that is not a volume")

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    kind = detect_format(path)
    if kind is None:
        raise ImageReadError(path, "not a recognised image format (PNG, JPEG, BMP, TIFF, DICOM, NIfTI)")
    if kind == "dicom":
        frames = _dicom_to_images(path)
        return frames[len(frames) // 2]
    if kind == "nifti":
        data = _nifti_array(path)
        if data.ndim == 3 and data.shape[-1] in (3, 4) and data.dtype.kind in "ui" and data.dtype.itemsize == 1:
            return _to_rgb(data.astype(np.float32) / 255.0)  # RGB(A) NIfTI
        if data.ndim != 2:
            if data.ndim == 3:
                raise ImageReadError(path, f"3-D NIfTI volume of shape {tuple(data.shape)}: {THREE_D_FIX}")
            raise ImageReadError(path, _nifti_dims_reason(tuple(data.shape)))
        plane = np.asarray(data, dtype=np.float32)
        return _to_rgb(apply_window(plane, *percentile_window(plane)))
    return _read_raster(path)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask (any supported format) as a boolean ``HxW`` array: any non-zero value is ``True``.

    Raw stored values are thresholded (no windowing), so an all-zero mask stays empty. A mask larger than
    :data:`MAX_IMAGE_SIDE` is downscaled to the size :func:`read_image` gives its image (box resampling, a
    pixel is ``True`` when at least half of its area was).

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> file = Path(tempfile.mkdtemp()) / "mask.png"
        >>> Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(file)
        >>> read_mask(file).tolist()
        [[False, True]]

    """
    mask = _read_mask_any(path)
    target = _target_size(*mask.shape[:2])
    if target is None:
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((target[1], target[0]), Image.Resampling.BOX)
    _log_downscale(path, mask.shape[:2], target)
    return np.asarray(resized) >= 128


def _read_mask_any(path: str | Path) -> np.ndarray:
    """:func:`read_mask` without the size limit."""
    parsed = parse_slice_reference(path)
    file = parsed[0] if parsed else Path(path)
    if not file.is_file():
        raise ImageReadError(path, "mask file not found")
    kind = detect_format(file)
    if kind is None:
        raise ImageReadError(path, "mask is not a recognised image format")
    if kind == "nifti":
        data = _nifti_array(file)
        if parsed is not None:
            data = np.take(data, parsed[2], axis=parsed[1]) if data.ndim == 3 else data
        elif data.ndim == 3:
            raise ImageReadError(path, f"3-D NIfTI mask volume of shape {tuple(data.shape)}: {THREE_D_FIX}")
        elif data.ndim != 2:
            raise ImageReadError(path, _nifti_dims_reason(tuple(data.shape)))
        return np.asarray(data) > 0
    if kind == "dicom":
        pixels, _ = _dicom_pixels(file)
        frame = pixels[parsed[2] if parsed else len(pixels) // 2]
        return (frame.max(axis=-1) if frame.ndim == 3 else frame) > 0
    try:
        with Image.open(file) as image:
            array = np.asarray(image.convert("RGB") if image.mode in ("P", "1", "CMYK") else image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or unreadable mask ({error})") from error
    return (array.max(axis=-1) if array.ndim == 3 else array) > 0


# --------------------------------------------------------------------------------------------------- checks


class ImageFilesError(ImageReadError):
    """Several files cannot be read; the message lists the first few with their reasons, plus the count.

    ``problems`` holds every ``(file, reason)``; ``path`` and ``reason`` are those of the first file.

    Example:
        >>> error = ImageFilesError([("/d/a.png", "corrupt"), ("/d/b.dcm", "no pixel data")], "ds")
        >>> print(error)  # doctest: +NORMALIZE_WHITESPACE
        ds: 2 file(s) cannot be read as images; remove or replace these files, then run again:
          /d/a.png: corrupt
          /d/b.dcm: no pixel data

    """

    def __init__(self, problems: list[tuple[str, str]], name: str = "dataset", max_listed: int = 10) -> None:
        self.problems = list(problems)
        self.path, self.reason = self.problems[0] if self.problems else ("", "")
        lines = [f"  {path}: {reason}" for path, reason in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"  ... and {len(self.problems) - max_listed} more")
        header = (
            f"{name}: {len(self.problems)} file(s) cannot be read as images; "
            "remove or replace these files, then run again:"
        )
        ValueError.__init__(self, "\n".join([header, *lines]))


def _tail(path: Path, count: int) -> bytes:
    with path.open("rb") as file:
        file.seek(0, 2)
        file.seek(max(0, file.tell() - count))
        return file.read()


def _decode_problem(path: Path, mask: bool) -> str | None:
    """Full read, only for files whose cheap check looked suspicious."""
    try:
        (_read_mask_any if mask else _read_any)(path)
    except ImageReadError as error:
        return error.reason
    return None


def _raster_problem(path: Path, kind: str, mask: bool) -> str | None:
    try:
        with Image.open(path) as image:
            if image.width < 1 or image.height < 1:
                return "image has no pixels (size 0)"
            if kind == "png":
                image.verify()  # chunk structure and CRCs, no decompression
    except UnidentifiedImageError:
        return "not a readable image (unknown or corrupt format)"
    except (OSError, SyntaxError, ValueError) as error:
        return f"corrupt or truncated image ({error})"
    if kind == "jpeg" and b"\xff\xd9" not in _tail(path, 64):  # no end-of-image marker: truncated?
        return _decode_problem(path, mask)
    return None


def _dicom_problem(path: Path, mask: bool) -> str | None:
    import pydicom
    from pydicom.dataelem import RawDataElement

    try:
        dataset = pydicom.dcmread(path, force=True, defer_size=1024)
    except Exception as error:
        return f"not a readable DICOM file ({error})"
    element = next(
        (
            dataset.get_item(tag, keep_deferred=True)
            for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
            if tag in dataset
        ),
        None,
    )
    if element is None:
        return "DICOM file has no pixel data (a report or header-only file?)"
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        return "DICOM file has pixel data but no Rows/Columns"
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if isinstance(element, RawDataElement):
        length, offset = element.length, element.value_tell
    else:
        length, offset = len(element.value or b""), None
    if length == 0xFFFFFFFF or (syntax is not None and syntax.is_compressed):  # encapsulated (compressed) pixels
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(syntax).is_available
        except Exception:
            available = False
        if not available:
            return f"no decoder installed for the DICOM compression {syntax.name if syntax else '?'}"
        return None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    bits = int(dataset.get("BitsAllocated", 16) or 16)
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if length < expected:
        return f"DICOM pixel data too short ({length} bytes for {frames}x{rows}x{columns}, expected {expected})"
    if offset is not None and offset + length > path.stat().st_size:
        return "truncated DICOM file (the pixel data ends after the end of the file)"
    del mask
    return None


@functools.lru_cache(maxsize=256)
def _nifti_header(path: str, mtime: float) -> tuple[tuple[int, ...], bool, str | None]:
    """``(shape, rgb, problem)`` of a NIfTI file from its header (shape with trailing 1s removed)."""
    del mtime
    import nibabel as nib

    file = Path(path)
    try:
        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
        dtype = image.get_data_dtype()
        offset = int(image.dataobj.offset)
    except Exception as error:
        return (), False, f"not a readable NIfTI file ({error})"
    if dtype.names:  # RGB NIfTI stored as a structured dtype: one channel per field
        shape = (*[s for s in shape if s != 1], len(dtype.names))
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    rgb = bool(dtype.names) or (len(shape) == 3 and shape[-1] in (3, 4) and dtype.kind in "ui" and dtype.itemsize == 1)
    if 0 in shape:
        return shape, rgb, f"NIfTI of shape {shape} has no voxels"
    expected = offset + int(np.prod(image.shape, dtype=np.int64)) * dtype.itemsize
    if file.name.lower().endswith(".gz"):
        # gzip ends with the uncompressed size (ISIZE); a truncated or multi-member file does not match it
        if expected >= 2**32 or int.from_bytes(_tail(file, 4), "little") != expected:
            try:
                np.asanyarray(image.dataobj)
            except Exception as error:
                return shape, rgb, f"corrupt or truncated NIfTI file ({error})"
    elif file.stat().st_size < expected:
        return shape, rgb, f"truncated NIfTI file ({file.stat().st_size} bytes, its header needs {expected})"
    return shape, rgb, None


def _nifti_problem(path: Path, mask: bool, slice_at: tuple[int, int] | None) -> str | None:
    shape, rgb, problem = _nifti_header(str(path), path.stat().st_mtime)
    if problem is not None:
        return problem
    if len(shape) > 3:
        return _nifti_dims_reason(shape)
    if slice_at is not None:
        axis, index = slice_at
        volume = shape if len(shape) == 3 else (*shape, 1)
        if not 0 <= axis < 3 or not 0 <= index < volume[axis]:
            return f"no slice {index} along axis {axis} in volume of shape {shape}"
        return None
    if len(shape) == 3 and not (rgb and not mask):
        return f"3-D NIfTI {'mask ' if mask else ''}volume of shape {shape}: {THREE_D_FIX}"
    return None


def check_image_file(path: str | Path, mask: bool = False) -> str | None:
    r"""Why :func:`read_image` (or :func:`read_mask`, ``mask=True``) would fail on ``path`` (``None``: it would not).

    Cheap: no image is decoded. PNGs are checked chunk by chunk (structure and checksums, no
    decompression), JPEGs for their header and end-of-image marker, DICOMs for pixel data and its length
    against the file size (or an installed decoder for compressed pixels), NIfTI for its dimensions
    (2-D images, or 3-D volumes through slice references; a 4-D file is refused) and its data length.
    Only a file whose cheap check looks suspicious (e.g. a JPEG without end marker) is decoded in full.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> file = Path(tempfile.mkdtemp()) / "scan.png"
        >>> _ = file.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
        >>> check_image_file(file)
        'not a readable image (unknown or corrupt format)'
        >>> check_image_file(file.with_name("missing.png"))
        'file not found'

    """
    parsed = parse_slice_reference(path)
    file = parsed[0] if parsed else Path(path)
    if not file.is_file():
        return "volume file not found" if parsed else "file not found"
    kind = detect_format(file)
    if kind is None:
        return _NOT_AN_IMAGE if looks_like_image_name(file) else "not a recognised image format"
    if kind == "nifti":
        return _nifti_problem(file, mask, parsed[1:] if parsed else None)
    if kind == "dicom":
        problem = _dicom_problem(file, mask)
        if problem is None and parsed is not None:
            depth = volume_depth(file)
            if not 0 <= parsed[2] < depth:
                return f"no frame {parsed[2]} in DICOM with {depth} frames"
        return problem
    if parsed is not None and parsed[2] != 0:
        return "slice reference to a file that is not a volume"
    return _raster_problem(file, kind, mask)


def check_image_files(images: Sequence[str | Path], masks: Sequence[str | Path] = (), name: str = "dataset") -> None:
    """Check every image and mask file (:func:`check_image_file`); raise ONE error listing all bad files.

    Each distinct path is checked once; empty mask paths are skipped.

    Raises:
        ImageFilesError: at least one file cannot be read (the message lists the first few and the count).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> for stem in ("a", "b"):
        ...     _ = (folder / f"{stem}.png").write_text("not an image")
        >>> check_image_files([folder / "a.png", folder / "b.png"], name="demo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        anomalib_sir.data.io.ImageFilesError: demo: 2 file(s) cannot be read as images; remove or replace ...

    """
    problems: list[tuple[str, str]] = []
    seen: set[tuple[str, bool]] = set()
    for paths, is_mask in ((images, False), (masks, True)):
        for path in paths:
            key = (str(path), is_mask)
            if not key[0] or key in seen:
                continue
            seen.add(key)
            problem = check_image_file(key[0], mask=is_mask)
            if problem is not None:
                problems.append((key[0], f"{'mask: ' if is_mask else ''}{problem}"))
    if problems:
        raise ImageFilesError(problems, name)
