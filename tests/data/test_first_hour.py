"""A user's first hour, data side: what used to go wrong, one test per item (tiny generated data only).

1. ``anomalib test`` in the training run's folder rewrote the run's metrics and split files.
2. A corrupt file, a DICOM without pixels or a 4-D NIfTI in the *test* split failed only after training.
3. 16-bit and RGBA PNGs: the datamodule's training image must be what ``read_image`` (and predict) read.
4. Tiny images were scored without a word; huge ones took seconds and gigabytes to read.
5. The notebook was committed without outputs and did not say which data it used.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from medical_files import gray, save_dicom, save_nifti, save_png
from PIL import Image

from anomalib_sir.data import ClassFolders, PerDatasetEvaluator, SplitFolders, io
from anomalib_sir.data.dataset import check_samples
from anomalib_sir.data.io import ImageFilesError, ImageReadError, read_image, read_mask
from anomalib_sir.data.splits import log_split

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "sir_one_shot.ipynb"


def _class_folders(root: Path, normal: int = 8, abnormal: int = 4, size: int = 32) -> Path:
    for i in range(normal):
        save_png(root / "no" / f"n{i:02d}.png", gray(size))
    for i in range(abnormal):
        save_png(root / "yes" / f"y{i:02d}.png", gray(size, lesion=True))
    return root


# ------------------------------------------------------------------------------------ 1. nothing overwritten


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_anomalib_test_keeps_the_training_runs_files(tmp_path: Path) -> None:
    data = _class_folders(tmp_path / "scans", normal=10, abnormal=4)
    common = [
        "--model", "Sir", "--model.image_size", "[64,64]", "--model.width", "16", "--model.loops", "1",
        "--model.pre_trained", "false", "--model.visualizer", "false",
        "--data", "anomalib_sir.data.ClassFolders", "--data.root", str(data), "--data.normal_dir", "no",
        "--data.abnormal_dirs", "yes", "--data.shot", "1", "--data.num_workers", "0",
        "--default_root_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    _run([ANOMALIB, "train", *common, "--trainer.max_steps", "2"], tmp_path)
    (checkpoint,) = (tmp_path / "runs").rglob("model.ckpt")
    run_dir = checkpoint.parents[2]  # .../Sir/scans/v0
    metrics, split = run_dir / "metrics_per_dataset.csv", run_dir / "splits" / "scans.csv"
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (metrics, split)}

    _run([ANOMALIB, "test", *common, "--ckpt_path", str(checkpoint)], tmp_path)

    for path, (content, mtime) in before.items():  # the training run's files are untouched
        assert (path.read_bytes(), path.stat().st_mtime_ns) == (content, mtime), path
    new = run_dir / "metrics_per_dataset-2.csv"
    assert new.is_file()
    assert (run_dir / "metrics_per_dataset-2.md").is_file()
    # the same data config gives the same (split_seed) test split: same images scored, same metrics
    assert not (run_dir / "splits" / "scans-2.csv").exists()
    pd.testing.assert_frame_equal(pd.read_csv(new), pd.read_csv(metrics))


def test_evaluator_writes_a_new_table_instead_of_overwriting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = SimpleNamespace(datamodule=None, default_root_dir=str(tmp_path))
    module = SimpleNamespace(log=lambda *args, **kwargs: None)
    written = []
    for scores in ([0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.2, 0.8]):
        evaluator = PerDatasetEvaluator(print_table=False)
        batch = SimpleNamespace(pred_score=torch.tensor(scores), gt_label=torch.tensor([0, 1, 0, 1]), pred_label=None)
        evaluator.update(batch, 0)
        with caplog.at_level(logging.INFO, logger="anomalib_sir.data.evaluation"):
            evaluator.on_test_epoch_end(trainer, module)
        written.append(evaluator.table_path)
    assert [path.name for path in written] == ["metrics_per_dataset.csv", "metrics_per_dataset-2.csv"]
    assert pd.read_csv(written[0])["image_AUROC"].iloc[0] == 1.0  # the first table was kept
    assert pd.read_csv(written[1])["image_AUROC"].iloc[0] == 0.25
    assert (tmp_path / "metrics_per_dataset-2.md").is_file()
    assert str(written[1]) in caplog.text


def test_split_record_is_never_overwritten_by_a_different_split(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image_path": ["a", "b", "c"], "label_index": [0, 0, 1], "split": ["train", "test", "test"]})
    first = log_split(frame, "ds", tmp_path)
    content = first.read_text()
    assert log_split(frame, "ds", tmp_path) == first  # same split: the record is kept as is
    other = log_split(frame.assign(split=["test", "train", "test"]), "ds", tmp_path)
    assert other.name == "ds-2.csv"
    assert first.read_text() == content


# ---------------------------------------------------------------------------------- 2. bad files at setup


def _four_d_nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 3, 2), np.int16), np.eye(4)), path)
    return path


def test_bad_files_of_every_split_are_listed_at_setup(tmp_path: Path) -> None:
    root = tmp_path / "bmad"
    for split, folder, count in (("train", "good", 4), ("valid", "good", 2), ("test", "good", 2)):
        for i in range(count):
            save_png(root / split / folder / f"{split}{i}.png", gray(32))
    for split in ("valid", "test"):
        for i in range(2):
            save_png(root / split / "Ungood" / f"{split}_b{i}.png", gray(32, lesion=True))
    good = save_png(root / "train" / "good" / "full.png", gray(32))
    (root / "train" / "good" / "truncated.png").write_bytes(good.read_bytes()[:120])
    dicom = save_dicom(root / "valid" / "good" / "ct.dcm", gray(32).astype(np.uint16))
    dataset = pydicom.dcmread(dicom)
    del dataset.PixelData
    dataset.save_as(dicom)
    _four_d_nifti(root / "test" / "Ungood" / "fmri.nii.gz")

    datamodule = SplitFolders(root, normal_dir="good", num_workers=0)
    with pytest.raises(ImageFilesError) as error:
        datamodule.setup()  # before: set up fine, and the test split failed after training
    message = str(error.value)
    assert "3 file(s) cannot be read" in message
    assert "remove or replace these files" in message
    assert "truncated.png: corrupt or truncated image" in message
    assert "[train split]" in message
    assert "ct.dcm: DICOM file has no pixel data" in message
    assert "[val split]" in message
    assert "fmri.nii.gz: 4-D NIfTI of shape (32, 32, 3, 2)" in message
    assert "[test split]" in message
    assert "--data.expand_volumes" in message
    assert "nibabel" in message
    assert isinstance(error.value, ImageReadError)
    assert len(error.value.problems) == 3


def test_four_d_nifti_message_names_file_shape_and_cli_option(tmp_path: Path) -> None:
    path = _four_d_nifti(tmp_path / "fmri.nii.gz")
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    message = str(error.value)
    assert message.startswith(f"{path}: 4-D NIfTI of shape (32, 32, 3, 2)")  # before: "3-D NIfTI volume ..."
    assert "3-D" not in message.split(":")[1]
    assert "one volume / time point" in message
    assert "--data.expand_volumes true" in message
    volume = save_nifti(tmp_path / "volume.nii.gz", np.zeros((32, 32, 4), np.int16))
    with pytest.raises(ImageReadError, match=r"3-D NIfTI volume of shape \(32, 32, 4\).*--data\.expand_volumes true"):
        read_image(volume)


def test_file_check_is_fast_and_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = Image.fromarray(gray(32))
    paths = []
    for i in range(600):
        paths.append(tmp_path / f"{i:03d}.png")
        image.save(paths[-1])
    frame = pd.DataFrame({"image_path": [str(p) for p in paths], "mask_path": "", "split": "test"})

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the setup check must not decode images")

    monkeypatch.setattr(io, "_read_any", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    start = time.perf_counter()
    check_samples(frame, "speed")
    assert time.perf_counter() - start < 2.0  # about 0.2 s here


# -------------------------------------------------------------------------- 3. 16-bit and RGBA like predict


def test_training_image_is_what_read_image_and_predict_read(tmp_path: Path) -> None:
    root = tmp_path / "few_shot"
    sixteen = (np.random.default_rng(0).random((32, 40)) * 3000 + 1000).astype(np.uint16)  # dark 16-bit CT-like
    save_png(root / "train" / "good" / "ct16.png", sixteen)
    rgba = np.dstack([gray(32), gray(32), gray(32), np.full((32, 32), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "train" / "good" / "rgba.png")
    save_png(root / "test" / "good" / "t.png", gray(32))
    save_png(root / "test" / "bad" / "b.png", gray(32, lesion=True))
    datamodule = SplitFolders(root, normal_dir="good", num_workers=0)
    datamodule.setup()

    from anomalib_sir.deploy.predict import iter_scan_images

    predicted = {Path(scan.source).name: scan.image for scan in iter_scan_images([root / "train"])}
    items = {Path(item.image_path).name: item for item in datamodule.train_data}
    assert set(items) == {"ct16.png", "rgba.png"}
    for name, item in items.items():
        expected = torch.from_numpy(read_image(item.image_path)).permute(2, 0, 1)
        torch.testing.assert_close(item.image.as_subclass(torch.Tensor), expected, rtol=0, atol=0)
        np.testing.assert_array_equal(predicted[name], read_image(item.image_path))  # as anomalib-sir predict
    image16 = items["ct16.png"].image
    assert float(image16.max()) < 0.1  # not all white (anomalib's Folder reads it as 1.0 everywhere)
    torch.testing.assert_close(image16[0], torch.from_numpy(sixteen / 65535.0).float())
    torch.testing.assert_close(items["rgba.png"].image[0], torch.from_numpy(rgba[..., 0] / 255 * (128 / 255)).float())


# ----------------------------------------------------------------------------------------- 4. image sizes


def test_tiny_image_warns_once_naming_file_and_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny = save_png(tmp_path / "tiny.png", gray(8))
    with caplog.at_level(logging.WARNING, logger="anomalib_sir.data.io"):
        read_image(tiny)
        read_image(tiny)
        read_image(save_png(tmp_path / "fine.png", gray(32)))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1  # before: silently scored
    assert str(tiny) in warnings[0]
    assert "8x8 px" in warnings[0]


def test_large_image_is_downscaled_at_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(io, "MAX_IMAGE_SIDE", 64)  # 2048 px by default; a small limit keeps the test tiny
    rng = np.random.default_rng(0)
    wide = save_png(tmp_path / "wide.png", (rng.random((100, 200)) * 60000).astype(np.uint16))
    photo = tmp_path / "photo.jpg"
    Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(photo, quality=95)
    mask = np.zeros((100, 200), np.uint8)
    mask[:, :100] = 255
    mask_path = save_png(tmp_path / "wide_mask.png", mask)
    with caplog.at_level(logging.DEBUG, logger="anomalib_sir.data.io"):
        image = read_image(wide)
    assert image.shape == (32, 64, 3)  # before: (100, 200, 3)
    original = np.asarray(Image.open(wide), dtype=np.float64) / 65535
    assert abs(float(image.mean()) - original.mean()) < 1e-3  # area-preserving: the mean stays
    assert "from 200x100 to 64x32" in caplog.text
    assert read_image(photo).shape == (64, 64, 3)
    downscaled_mask = read_mask(mask_path)
    assert downscaled_mask.shape == (32, 64)
    assert downscaled_mask[:, :32].all()
    assert not downscaled_mask[:, 32:].any()
    volume = save_nifti(tmp_path / "big.nii.gz", rng.random((128, 96, 2)).astype(np.float32))
    slices = list(io.read_volume_slices(volume))
    assert slices[0][1].shape == (64, 48, 3)
    np.testing.assert_array_equal(read_image(slices[1][0]), slices[1][1])


# --------------------------------------------------------------------------------------------- 5. notebook


def test_notebook_is_committed_with_outputs_and_names_its_data() -> None:
    assert NOTEBOOK.stat().st_size < 1_000_000
    notebook = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert all(cell["outputs"] for cell in code)  # before: committed without outputs
    texts = [
        "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/markdown", ""))
        for cell in code
        for output in cell["outputs"]
    ]
    data_lines = [line for text in texts for line in text.splitlines() if line.startswith("DATA: ")]
    assert len(data_lines) == 1
    assert data_lines[0].split()[1] in ("REAL", "GENERATED")
    markdown = "".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown")
    assert "Which data does this run use?" in markdown
    assert "DATA:" in markdown
    pngs = [
        output["data"]["image/png"]
        for cell in code
        for output in cell["outputs"]
        if "image/png" in output.get("data", {})
    ]
    assert pngs
    assert all(len(png) < 400_000 for png in pngs)


def test_class_folders_setup_still_passes_on_good_files(tmp_path: Path) -> None:
    datamodule = ClassFolders(_class_folders(tmp_path / "ok"), normal_dir="no", abnormal_dirs="yes", num_workers=0)
    datamodule.setup()
    assert len(datamodule.test_data) > 0
