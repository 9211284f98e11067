"""Scoring new scans (PNG 8/16-bit, DICOM file and series, NIfTI volume) writes a CSV and heatmap PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_sir.data.io import ImageReadError, read_image
from anomalib_sir.deploy import CSV_COLUMNS, OpenVINORuntime, iter_scan_images, predict_scans


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_scores_decisions_and_heatmaps(sir_exports, scans, tmp_path: Path) -> None:
    inputs = [scans["pngs"], scans["dicom"], scans["series"], scans["nifti"]]
    run = predict_scans(sir_exports["openvino"], inputs, tmp_path / "out", batch_size=2, heatmap_size=96)

    rows = _rows(run.csv_path)
    assert run.output_dir == tmp_path / "out"
    assert list(rows[0]) == list(CSV_COLUMNS)
    names = [row["name"] for row in rows]
    assert names == [
        "a.png",
        "b16.png",  # notes.txt in the same folder is not an image and is ignored
        "single.dcm",
        "slice00.dcm",
        "slice01.dcm",
        "slice02.dcm",  # the DICOM series, one row per file
        "volume.nii.gz::axis2:0000",
        "volume.nii.gz::axis2:0001",
        "volume.nii.gz::axis2:0002",  # the NIfTI volume, one row per slice
    ]
    assert run.num_images == len(rows) == 9
    assert run.num_anomalous == sum(int(row["pred_label"]) for row in rows)
    assert run.skipped == ()
    for row in rows:
        assert 0.0 <= float(row["pred_score"]) <= 1.0  # normalised by the exported post-processor
        assert row["decision"] == ("anomalous" if row["pred_label"] == "1" else "normal")
        heatmap = Image.open(run.output_dir / row["heatmap"])
        assert heatmap.format == "PNG"
        assert heatmap.width > 2 * heatmap.height  # three panels side by side: image | map | overlay
        assert max(heatmap.size[1], heatmap.size[0] // 3) == 96

    # The CSV holds what the exported model says about exactly the image that was read.
    expected = OpenVINORuntime(sir_exports["openvino"])(read_image(scans["dicom"]).transpose(2, 0, 1)[None])
    assert float(rows[2]["pred_score"]) == pytest.approx(float(expected["pred_score"][0]), abs=1e-5)
    assert int(rows[2]["pred_label"]) == int(expected["pred_label"][0])


def test_predict_never_overwrites_existing_outputs(sir_exports, scans, tmp_path: Path) -> None:
    first = predict_scans(sir_exports["openvino"], [scans["pngs"]], tmp_path / "out", heatmaps=False)
    content = first.csv_path.read_bytes()
    second = predict_scans(sir_exports["openvino"], [scans["pngs"]], tmp_path / "out", heatmaps=False)
    assert first.output_dir == tmp_path / "out"
    assert second.output_dir == tmp_path / "out-2"
    assert first.csv_path.read_bytes() == content
    assert second.csv_path.read_bytes() == content  # same model, same inputs: same results


def test_predict_runs_the_onnx_export_too(sir_exports, scans, tmp_path: Path) -> None:
    via_onnx = predict_scans(sir_exports["onnx"], [scans["pngs"]], tmp_path / "onnx", batch_size=1, heatmaps=False)
    via_ir = predict_scans(sir_exports["openvino"], [scans["pngs"]], tmp_path / "ir", heatmaps=False)
    onnx_scores = [float(r["pred_score"]) for r in _rows(via_onnx.csv_path)]
    ir_scores = [float(r["pred_score"]) for r in _rows(via_ir.csv_path)]
    np.testing.assert_allclose(onnx_scores, ir_scores, atol=1e-4)
    assert [r["heatmap"] for r in _rows(via_onnx.csv_path)] == ["", ""]


def test_unreadable_files_in_folders_are_skipped_and_reported(sir_exports, scans, tmp_path: Path) -> None:
    (scans["pngs"] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # PNG magic, no image
    run = predict_scans(sir_exports["openvino"], [scans["pngs"]], tmp_path / "out", heatmaps=False)
    assert run.skipped == (scans["pngs"] / "broken.png",)
    assert [row["name"] for row in _rows(run.csv_path)] == ["a.png", "b16.png"]


def test_explicit_inputs_must_exist_and_be_images(scans, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_scan_images([tmp_path / "missing"]))
    with pytest.raises(ImageReadError):
        list(iter_scan_images([scans["pngs"] / "notes.txt"]))


def test_scan_images_keep_their_own_size(scans) -> None:
    shapes = {scan.name: scan.image.shape for scan in iter_scan_images([scans["dicom"], scans["nifti"]])}
    assert shapes["single.dcm"] == (40, 56, 3)
    assert shapes["volume.nii.gz::axis2:0001"] == (40, 48, 3)
