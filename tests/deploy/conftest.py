"""Tiny trained models, their exports, and generated PNG / DICOM / NIfTI scans for the deploy tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIR_SMALL = {"image_size": (64, 64), "width": 32, "loops": 2}


def _fit(model, datamodule, workdir: Path):
    """A few Engine steps plus the validation pass that sets the post-processor's thresholds."""
    import torch
    from anomalib.engine import Engine

    torch.manual_seed(0)
    engine = Engine(
        max_steps=3,
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def _openvino_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the OpenVINO compiled-model cache out of the home folder."""
    previous = os.environ.get("ANOMALIB_SIR_CACHE")
    os.environ["ANOMALIB_SIR_CACHE"] = str(tmp_path_factory.mktemp("ov_cache"))
    yield
    if previous is None:
        del os.environ["ANOMALIB_SIR_CACHE"]
    else:
        os.environ["ANOMALIB_SIR_CACHE"] = previous


@pytest.fixture(scope="session")
def sir_fit_dir(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fit_sir")


@pytest.fixture(scope="session")
def trained_sir(demo_datamodule, sir_fit_dir: Path):
    """SIR with the default (pretrained, offline) EfficientNet-Lite0 teacher."""
    from anomalib_sir import Sir

    return _fit(Sir(**SIR_SMALL), demo_datamodule(), sir_fit_dir)


@pytest.fixture(scope="session")
def sir_checkpoint(trained_sir, sir_fit_dir: Path) -> Path:
    """The Lightning checkpoint anomalib's Engine wrote while fitting ``trained_sir``."""
    (checkpoint,) = sir_fit_dir.rglob("*.ckpt")
    return checkpoint


@pytest.fixture(scope="session")
def padim_checkpoint(demo_datamodule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of anomalib's Padim (resnet18, random weights, one epoch): another model's file."""
    from anomalib.models import Padim

    workdir = tmp_path_factory.mktemp("fit_padim")
    _fit(Padim(backbone="resnet18", layers=["layer1", "layer2"], pre_trained=False), demo_datamodule(), workdir)
    (checkpoint,) = workdir.rglob("*.ckpt")
    return checkpoint


@pytest.fixture(scope="session")
def trained_sir_resnet(demo_datamodule, tmp_path_factory: pytest.TempPathFactory):
    """SIR with another backbone: timm resnet18, random weights (parity does not need pretraining)."""
    from anomalib_sir import Sir

    model = Sir(backbone="resnet18", layers=(1, 2, 3), pre_trained=False, **SIR_SMALL)
    return _fit(model, demo_datamodule(), tmp_path_factory.mktemp("fit_resnet"))


@pytest.fixture(scope="session")
def sir_exports(trained_sir, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from anomalib_sir.deploy import export_model

    return export_model(trained_sir, tmp_path_factory.mktemp("export_sir"))


@pytest.fixture(scope="session")
def resnet_exports(trained_sir_resnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from anomalib_sir.deploy import export_model

    return export_model(trained_sir_resnet, tmp_path_factory.mktemp("export_resnet"))


def _load_folder(folder: Path) -> np.ndarray:
    """``(N, 3, H, W)`` float32 images of a folder of PNGs."""
    from anomalib_sir.data.io import read_image

    return np.stack([read_image(path).transpose(2, 0, 1) for path in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="session")
def parity_inputs(demo_root: Path) -> list[np.ndarray]:
    """Held-out normals and lesions (both decisions occur), plus a batch at another, non-square size."""
    from anomalib_sir.deploy import synthetic_images

    return [
        _load_folder(demo_root / "test/good"),
        _load_folder(demo_root / "test/lesion"),
        synthetic_images(3, (72, 50), seed=1),
    ]


# ----------------------------------------------------------------------------------- scan generators


def _gray(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2))
    return np.clip(0.6 * blob + 0.1 * rng.random((height, width)), 0, 1)


def write_png8(path: Path, rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Path:
    Image.fromarray((_gray(rng, *size) * 255).astype(np.uint8)).convert("RGB").save(path)
    return path


def write_png16(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 56)) -> Path:
    Image.fromarray((_gray(rng, *size) * 65535).astype(np.uint16)).save(path)
    return path


def write_dicom(path: Path, rng: np.random.Generator, size: tuple[int, int] = (48, 48), instance: int = 1) -> Path:
    """A minimal CT-like DICOM file (int16 HU with rescale slope/intercept and a window)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (_gray(rng, *size) * 1200 + 800).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, rng: np.random.Generator, shape: tuple[int, int, int] = (40, 48, 3)) -> Path:
    import nibabel as nib

    volume = np.stack([_gray(rng, *shape[:2]) * 1000 for _ in range(shape[2])], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine=np.eye(4)), path)
    return path


@pytest.fixture
def scans(tmp_path: Path) -> dict[str, Path]:
    """A folder of PNGs (8- and 16-bit) with a stray text file, a DICOM file, a DICOM series, a NIfTI volume."""
    rng = np.random.default_rng(0)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    write_png8(pngs / "a.png", rng)
    write_png16(pngs / "b16.png", rng)
    (pngs / "notes.txt").write_text("not an image\n")
    series = tmp_path / "series"
    series.mkdir()
    for index in range(3):
        write_dicom(series / f"slice{index:02d}.dcm", rng, instance=index + 1)
    return {
        "pngs": pngs,
        "dicom": write_dicom(tmp_path / "single.dcm", rng, size=(40, 56)),
        "series": series,
        "nifti": write_nifti(tmp_path / "volume.nii.gz", rng),
    }
