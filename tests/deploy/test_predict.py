"""Scoring new scans (PNG 8/16-bit, DICOM file and series, NIfTI volume) writes a CSV and heatmap PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_sir.data.io import ImageReadError, read_image
from anomalib_sir.deploy import (
    CSV_COLUMNS,
    DeployError,
    OpenVINORuntime,
    draw_heatmap,
    iter_scan_images,
    predict_scans,
)


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
        assert heatmap.width > 1.5 * heatmap.height  # three panels side by side: image | map | overlay
        assert 96 < heatmap.height <= 96 + 80  # panels of at most 96 px, plus the title

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
    (scans["pngs"] / "notes.png").write_text("a text file named like an image")  # used to abort the folder
    run = predict_scans(sir_exports["openvino"], [scans["pngs"]], tmp_path / "out", heatmaps=False)
    assert run.skipped == (scans["pngs"] / "broken.png", scans["pngs"] / "notes.png")
    assert run.num_images == 2
    rows = _rows(run.csv_path)
    assert [(row["name"], row["decision"]) for row in rows if row["decision"] == "unreadable"] == [
        ("broken.png", "unreadable"),
        ("notes.png", "unreadable"),
    ]
    assert all(row["error"] and not row["pred_score"] for row in rows if row["decision"] == "unreadable")
    assert [row["name"] for row in rows if row["decision"] != "unreadable"] == ["a.png", "b16.png"]


def test_nothing_is_written_when_the_inputs_or_the_model_are_wrong(sir_exports, scans, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeployError, match="no image files in"):
        predict_scans(sir_exports["openvino"], [tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(DeployError, match="exported model not found"):
        predict_scans(tmp_path / "model.xml", [scans["pngs"]], tmp_path / "out")
    xml_only = tmp_path / "copy" / "model.xml"
    xml_only.parent.mkdir()
    xml_only.write_bytes(sir_exports["openvino"].read_bytes())
    with pytest.raises(DeployError, match=r"model\.bin is missing"):
        predict_scans(xml_only, [scans["pngs"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failure_midway_removes_what_the_run_wrote(
    sir_exports, scans, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_sir.deploy import predict

    calls = []

    def failing_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("simulated inference failure")
        return original(self, images)

    original = predict.OpenVINORuntime.predict_batch
    monkeypatch.setattr(predict.OpenVINORuntime, "predict_batch", failing_second_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        predict_scans(sir_exports["openvino"], [scans["series"]], tmp_path / "new", batch_size=1)
    assert not (tmp_path / "new").exists()  # created by the run: removed
    existing = tmp_path / "existing"
    existing.mkdir()  # an empty folder the user made: kept, but emptied again
    calls.clear()
    with pytest.raises(RuntimeError, match="simulated"):
        predict_scans(sir_exports["openvino"], [scans["series"]], existing, batch_size=1)
    assert existing.is_dir()
    assert not any(existing.iterdir())


def test_predict_shows_a_progress_bar(sir_exports, scans, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    predict_scans(sir_exports["openvino"], [scans["series"]], tmp_path / "out", heatmaps=False, progress=True)
    err = capsys.readouterr().err
    assert "scoring" in err
    assert "0/3 [" in err  # files done / files to read


def test_heatmaps_share_one_colour_scale_tied_to_the_threshold() -> None:
    image = np.full((40, 60, 3), 0.5, np.float32)
    calm = draw_heatmap(image, np.full((16, 16), 0.3, np.float32), 0.42, False, "normal.png", size=96)
    hot = draw_heatmap(image, np.linspace(0, 0.9, 256, dtype=np.float32).reshape(16, 16), 0.81, True, "bad.png")
    for figure in (calm, hot):
        assert figure.axes[1].images[0].get_clim() == (0.0, 1.0)  # fixed range, not the image's own min..max
        colorbar = figure.axes[-1]
        assert "0.5 threshold" in [label.get_text() for label in colorbar.get_yticklabels()]
    assert calm.get_suptitle() == "normal.png   score 0.420 (threshold 0.5)   normal"
    assert hot.get_suptitle() == "bad.png   score 0.810 (threshold 0.5)   ANOMALOUS"
    # A uniform map below the threshold is drawn in the colour of its value, not as the scale's hottest colour.
    from matplotlib import colormaps

    pixels = np.asarray(calm.canvas.buffer_rgba())[..., :3].astype(int)
    box = calm.axes[1].get_window_extent()  # the anomaly-map panel, in pixels from the bottom left
    centre = pixels[pixels.shape[0] - int((box.y0 + box.y1) / 2), int((box.x0 + box.x1) / 2)]
    expected = (np.array(colormaps["inferno"](0.3)[:3]) * 255).astype(int)
    assert np.abs(centre - expected).max() <= 3


def test_heatmap_titles_are_not_clipped() -> None:
    long_name = "series_with_a_long_name/" * 4 + "slice.dcm::axis2:0007"
    figure = draw_heatmap(np.zeros((30, 90, 3)), np.zeros((8, 8)), 0.5, True, long_name, size=64)
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    texts = [figure._suptitle, *(axis.title for axis in figure.axes[:3]), *figure.axes[-1].get_yticklabels()]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0, text
        assert extent.x1 <= box.x1, text
        assert box.y0 <= extent.y0, text
        assert extent.y1 <= box.y1, text
    assert "…" in figure.get_suptitle()  # a very long name is shortened in the middle


def test_explicit_inputs_must_exist_and_be_images(scans, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="input not found"):
        list(iter_scan_images([tmp_path / "missing"]))
    with pytest.raises(ImageReadError):
        list(iter_scan_images([scans["pngs"] / "notes.txt"]))


def test_scan_images_keep_their_own_size(scans) -> None:
    shapes = {scan.name: scan.image.shape for scan in iter_scan_images([scans["dicom"], scans["nifti"]])}
    assert shapes["single.dcm"] == (40, 56, 3)
    assert shapes["volume.nii.gz::axis2:0001"] == (40, 48, 3)
