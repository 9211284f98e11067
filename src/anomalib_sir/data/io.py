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
from collections.abc import Iterator
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
) -> list[str]:
    """Sorted image files under ``folder``, chosen by content.

    Hidden files/folders and files whose name does not announce an image (``labels.csv``, ``Thumbs.db``)
    are skipped when their content is not an image. A file whose *name* announces an image
    (``.png``, ``.dcm``, no extension, ...) but whose content is not one raises :class:`ImageReadError`,
    so a corrupt file is reported when the dataset is built, not halfway through training.

    Args:
        folder: folder to search.
        recursive: also search sub-folders.
        exclude_dirs: names of sub-folders to skip (e.g. mask folders ``("label", "ground_truth")``).
        expand_volumes: replace each 3-D NIfTI / multi-frame DICOM by one slice reference per slice.
        axis: slicing axis for ``expand_volumes``.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ImageReadError: a file named like an image is not one.

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
                raise ImageReadError(path, "file name says image, but its content is not a known image format")
            continue
        if expand_volumes and kind in ("nifti", "dicom"):
            depth = volume_depth(path, axis=axis)
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


def _read_raster(path: Path) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF/WEBP through PIL, any mode and bit depth."""
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image) or image
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                mode = image.mode
            elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
                image = image.convert("RGBA" if mode == "PA" else "RGB")
                mode = image.mode
            array = np.asarray(image)
    except UnidentifiedImageError as error:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from error

    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
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
        raise ImageReadError(path, f"expected a 2-D image or 3-D volume, found shape {tuple(data.shape)}")
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
            yield slice_reference(path, index, axis), image
    elif kind == "dicom":
        for index, image in enumerate(_dicom_to_images(path)):
            yield slice_reference(path, index, 0), image
    else:
        yield slice_reference(path, 0, axis), read_image(path)


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported image (or a volume slice reference) as ``HxWx3`` float32 in ``[0, 1]``.

    The format is detected from the content. 2-D NIfTI images are windowed at their percentiles; a 3-D
    NIfTI *file* is refused (pick a slice with a slice reference or :func:`read_volume_slices`); for a
    multi-frame DICOM the middle frame is returned.

    Raises:
        ImageReadError: missing file, unknown format, corrupt data, or a 3-D volume given as a plain path.

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
            return read_image(volume)
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
            raise ImageReadError(
                path,
                f"3-D NIfTI volume of shape {tuple(data.shape)}: read slices with read_volume_slices() "
                "or a slice reference (slice_reference())",
            )
        plane = np.asarray(data, dtype=np.float32)
        return _to_rgb(apply_window(plane, *percentile_window(plane)))
    return _read_raster(path)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask (any supported format) as a boolean ``HxW`` array: any non-zero value is ``True``.

    Raw stored values are thresholded (no windowing), so an all-zero mask stays empty.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> file = Path(tempfile.mkdtemp()) / "mask.png"
        >>> Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(file)
        >>> read_mask(file).tolist()
        [[False, True]]

    """
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
        elif data.ndim != 2:
            raise ImageReadError(path, f"mask volume of shape {tuple(data.shape)}: give a slice reference")
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
