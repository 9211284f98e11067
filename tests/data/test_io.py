"""Reading images by content: every format becomes HxWx3 float32 in [0, 1]; errors name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from medical_files import save_dicom, save_jpeg, save_nifti, save_png
from PIL import Image

from anomalib_sir.data.io import (
    ImageReadError,
    detect_format,
    list_images,
    read_image,
    read_mask,
    read_volume_slices,
    slice_reference,
    volume_depth,
)


def _check(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.shape == (*shape, 3)
    assert image.dtype == np.float32
    assert 0.0 <= image.min() <= image.max() <= 1.0


def test_png_bit_depths_and_channels(tmp_path: Path) -> None:
    gray16 = np.array([[0, 32768], [65535, 65535]], dtype=np.uint16)
    image = read_image(save_png(tmp_path / "g16.png", gray16))
    _check(image, (2, 2))
    np.testing.assert_allclose(image[..., 0], gray16 / 65535.0, atol=1e-6)
    assert (image[..., 0] == image[..., 2]).all()  # gray repeated to three channels

    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 1] = 255
    np.testing.assert_allclose(read_image(save_png(tmp_path / "rgb.png", rgb))[0, 0], [0.0, 1.0, 0.0])

    rgba = np.full((3, 4, 4), 255, np.uint8)
    rgba[0, 0, 3] = 0  # transparent pixel -> composited onto black
    out = read_image(save_png(tmp_path / "rgba.png", rgba))
    _check(out, (3, 4))
    assert out[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert out[1, 1].tolist() == [1.0, 1.0, 1.0]

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[0, 1].tolist() == [1.0, 0.0, 0.0]


def test_formats_are_detected_by_content_not_extension(tmp_path: Path) -> None:
    array = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    no_ext = save_jpeg(tmp_path / "Y1", array)  # BrainMRI style
    upper = save_jpeg(tmp_path / "SCAN.JPEG", array)
    misnamed = save_png(tmp_path / "actually_png.jpg", array)
    Image.fromarray(array).save(tmp_path / "x.bmp")
    Image.fromarray(array.astype(np.uint16) * 257).save(tmp_path / "x.tif")
    assert [detect_format(p) for p in (no_ext, upper, misnamed)] == ["jpeg", "jpeg", "png"]
    assert detect_format(tmp_path / "x.bmp") == "bmp"
    assert detect_format(tmp_path / "x.tif") == "tiff"
    for path in (no_ext, upper, misnamed, tmp_path / "x.bmp", tmp_path / "x.tif"):
        image = read_image(path)
        _check(image, (8, 8))
        assert abs(float(image[..., 0].mean()) - array.mean() / 255.0) < 0.02


def test_dicom_rescale_and_file_window(tmp_path: Path) -> None:
    # stored 900..1200 with intercept -1000 -> HU -100..200; window 0 +- 100 -> 0, 0.5, 1, 1 (clipped)
    pixels = np.array([[900, 1000], [1100, 1200]], np.uint16)
    path = save_dicom(tmp_path / "ct.dcm", pixels, intercept=-1000.0, window=(0.0, 200.0))
    image = read_image(path)
    _check(image, (2, 2))
    np.testing.assert_allclose(image[..., 0], [[0.0, 0.5], [1.0, 1.0]], atol=1e-6)


def test_dicom_percentile_window_and_monochrome1(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 4000, 40, dtype=np.uint16), (4, 1))
    mono2 = read_image(save_dicom(tmp_path / "a" / "x", pixels, slope=2.0))  # no window, no extension
    mono1 = read_image(save_dicom(tmp_path / "b.dcm", pixels, slope=2.0, photometric="MONOCHROME1"))
    assert mono2[0, 0, 0] == 0.0
    assert mono2[0, -1, 0] == 1.0
    assert (np.diff(mono2[0, :, 0]) >= 0).all()
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_nifti_2d_3d_and_slice_references(tmp_path: Path) -> None:
    plane = np.arange(30, dtype=np.float32).reshape(5, 6)
    _check(read_image(save_nifti(tmp_path / "plane.nii", plane)), (5, 6))

    volume = np.stack([plane * (k + 1) for k in range(4)], axis=2).astype(np.int16)
    path = save_nifti(tmp_path / "vol.nii.gz", volume)
    assert detect_format(path) == "nifti"
    assert volume_depth(path) == 4
    assert volume_depth(path, axis=0) == 5
    slices = list(read_volume_slices(path))
    assert [name for name, _ in slices] == [slice_reference(path, k) for k in range(4)]
    for _, image in slices:
        _check(image, (5, 6))
    # one window for the whole volume: the brightest slice is brighter than the first
    assert slices[-1][1].mean() > slices[0][1].mean()
    # a slice reference reads like a path, with the same per-volume window
    np.testing.assert_array_equal(read_image(slices[2][0]), slices[2][1])
    sagittal = list(read_volume_slices(path, axis=0))
    assert len(sagittal) == 5
    assert sagittal[0][1].shape == (6, 4, 3)
    with pytest.raises(ImageReadError, match="3-D NIfTI volume"):
        read_image(path)
    with pytest.raises(ImageReadError, match="no slice 9"):
        read_image(slice_reference(path, 9))


def test_corrupt_files_raise_clear_errors(tmp_path: Path) -> None:
    text = tmp_path / "broken.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageReadError, match=r"broken\.png: not a recognised image format") as error:
        read_image(text)
    assert isinstance(error.value, ValueError)
    assert error.value.path == str(text)

    good = save_png(tmp_path / "full.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"truncated\.png: corrupt or truncated"):
        read_image(truncated)

    dicom = tmp_path / "bad.dcm"
    dicom.write_bytes(bytes(128) + b"DICM" + b"\x00" * 10)
    with pytest.raises(ImageReadError, match=r"bad\.dcm"):
        read_image(dicom)

    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "missing.png")


def test_list_images_by_content(tmp_path: Path) -> None:
    save_jpeg(tmp_path / "a" / "IMG", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "a" / "b.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / ".hidden" / "c.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "label" / "m.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "labels.csv").write_text("id,label\n")
    (tmp_path / "Thumbs.db").write_bytes(b"\x00\x01")
    found = [Path(p).relative_to(tmp_path).as_posix() for p in list_images(tmp_path, exclude_dirs=("label",))]
    assert found == ["a/IMG", "a/b.png"]

    (tmp_path / "a" / "corrupt.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match=r"corrupt\.png"):
        list_images(tmp_path)


def test_read_mask_thresholds_raw_values(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 2] = 1
    assert read_mask(save_png(tmp_path / "m.png", mask)).sum() == 1
    assert read_mask(save_png(tmp_path / "empty.png", np.zeros((4, 4), np.uint8))).sum() == 0
    volume = np.zeros((4, 4, 2), np.uint8)
    volume[0, 0, 1] = 1
    path = save_nifti(tmp_path / "m.nii.gz", volume)
    assert read_mask(slice_reference(path, 0)).sum() == 0
    assert read_mask(slice_reference(path, 1)).sum() == 1
