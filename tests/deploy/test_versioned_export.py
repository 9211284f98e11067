"""Exports never overwrite: anomalib's ``to_*`` methods with ``VersionedExportMixin``, and ``anomalib export``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalib_sir import Sir
from anomalib_sir.deploy import VersionedExportMixin, export_versioned

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def test_sir_exports_through_the_mixin() -> None:
    assert issubclass(Sir, VersionedExportMixin)
    assert Sir.to_onnx is VersionedExportMixin.to_onnx


@pytest.fixture(scope="module")
def tiny_model() -> Sir:
    torch.manual_seed(0)
    return Sir(image_size=(64, 64), width=16, pre_trained=False).eval()


def _earlier_export(root: Path, export_type: str, name: str) -> Path:
    earlier = root / "weights" / export_type / name
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier export")
    return earlier


def _no_leftovers(root: Path) -> None:
    assert not list((root / "weights").glob(".partial-*"))


def test_to_torch_twice_writes_two_folders(tiny_model: Sir, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = tiny_model.to_torch(tmp_path)
    with caplog.at_level(logging.WARNING, logger="anomalib_sir.deploy.versioned_export"):
        second = tiny_model.to_torch(tmp_path)
    assert first == tmp_path / "weights" / "torch" / "model.pt"
    assert second == tmp_path / "weights" / "torch-2" / "model.pt"
    assert first.is_file()
    assert second.is_file()
    assert str(second) in caplog.text  # the new folder is logged
    _no_leftovers(tmp_path)


def test_to_onnx_keeps_an_existing_export(tiny_model: Sir, tmp_path: Path) -> None:
    earlier = _earlier_export(tmp_path, "onnx", "model.onnx")
    path = tiny_model.to_onnx(tmp_path)
    assert path == tmp_path / "weights" / "onnx-2" / "model.onnx"
    assert path.is_file()
    assert earlier.read_bytes() == b"an earlier export"
    _no_leftovers(tmp_path)


def test_to_openvino_keeps_an_existing_export_and_leaves_no_onnx_behind(tiny_model: Sir, tmp_path: Path) -> None:
    earlier = _earlier_export(tmp_path, "openvino", "model.xml")
    path = tiny_model.to_openvino(tmp_path)
    assert path == tmp_path / "weights" / "openvino-2" / "model.xml"
    assert path.with_suffix(".bin").is_file()
    assert earlier.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["openvino", "openvino-2"]


def test_a_failed_export_leaves_nothing_behind(
    tiny_model: Sir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_save(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        tiny_model.to_torch(tmp_path)
    assert list((tmp_path / "weights").iterdir()) == []


def test_export_versioned_numbers_past_taken_folders(tmp_path: Path) -> None:
    for taken in ("onnx", "onnx-2"):
        _earlier_export(tmp_path, taken, "model.onnx")
    (tmp_path / "weights" / "onnx-3").mkdir()  # empty: free

    def write(stage: Path) -> Path:
        target = stage / "weights" / "onnx" / "model.onnx"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"new")
        (target.parent / "model.onnx.data").write_bytes(b"weights")  # external data travels with it
        return target

    path = export_versioned(tmp_path, "onnx", write)
    assert path == tmp_path / "weights" / "onnx-3" / "model.onnx"
    assert (path.parent / "model.onnx.data").read_bytes() == b"weights"


@pytest.mark.slow
def test_anomalib_export_cli_with_the_mixin_never_overwrites(sir_checkpoint: Path, tmp_path: Path) -> None:
    """``anomalib export`` twice to the same root: two folders, each path logged once, no import notices."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        ANOMALIB, "export", "--model", "Sir", "--model.image_size", "[64,64]",
        "--model.width", "32", "--model.loops", "2", "--model.pre_trained", "false", "--ckpt_path", str(sir_checkpoint),
        "--export_type", "torch", "--export_root", str(tmp_path / "exports"),
    ]  # fmt: skip
    outputs = []
    for _ in range(2):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout + result.stderr)
    first, second = (tmp_path / "exports" / "weights" / name / "model.pt" for name in ("torch", "torch-2"))
    assert first.is_file()
    assert second.is_file()
    assert outputs[0].count(f"Exported model to {first}") == 1  # logged once, not plain + Rich
    assert outputs[1].count(f"Exported model to {second}") == 1
    assert "already holds an export" in outputs[1]
    for output in outputs:
        assert "FutureWarning" not in output
        assert "Traceback" not in output
