"""Export through anomalib to OpenVINO and ONNX; the exports match torch eager (maps and decisions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalib_sir.deploy import EXPORT_OUTPUTS, check_parity, export_model, load_runtime, synthetic_images


def test_both_formats_are_exported_with_every_output(sir_exports: dict[str, Path]) -> None:
    assert sir_exports["openvino"].name == "model.xml"
    assert sir_exports["openvino"].with_suffix(".bin").is_file()
    assert sir_exports["onnx"].name == "model.onnx"
    for path in sir_exports.values():
        assert sorted(load_runtime(path)(synthetic_images(1, (32, 32)))) == sorted(EXPORT_OUTPUTS)


def test_exports_keep_dynamic_batch_and_image_size(sir_exports: dict[str, Path]) -> None:
    import openvino as ov

    partial_shape = ov.Core().read_model(sir_exports["openvino"]).input(0).partial_shape
    assert partial_shape[0].is_dynamic
    assert partial_shape[2].is_dynamic
    assert partial_shape[3].is_dynamic
    for path in sir_exports.values():
        runtime = load_runtime(path)
        for batch, size in ((1, (100, 37)), (5, (64, 64))):
            outputs = runtime(synthetic_images(batch, size))
            assert outputs["pred_score"].shape == (batch,)
            assert outputs["anomaly_map"].shape == (batch, 1, 64, 64)  # the model's own resolution


@pytest.mark.parametrize(
    ("model_fixture", "exports_fixture"),
    [("trained_sir", "sir_exports"), ("trained_sir_resnet", "resnet_exports")],
    ids=["tf_efficientnet_lite0", "resnet18"],
)
def test_openvino_and_onnx_match_torch(
    model_fixture: str, exports_fixture: str, parity_inputs: list[np.ndarray], request: pytest.FixtureRequest
) -> None:
    model, exports = request.getfixturevalue(model_fixture), request.getfixturevalue(exports_fixture)
    assert not np.isnan(float(model.post_processor.image_threshold))  # decisions use a fitted threshold
    report = check_parity(model, [exports["openvino"], exports["onnx"]], parity_inputs, atol=1e-3)
    print(f"\n{model_fixture}\n{report.format_table()}")
    assert {r.runtime for r in report.results} == {"openvino", "onnxruntime"}
    for result in report.results:
        assert result.num_images == sum(len(batch) for batch in parity_inputs)
        assert result.map_max_abs_diff <= 1e-3
        assert result.decisions_match
    assert report.passed


def test_parity_fails_when_outputs_differ(trained_sir, sir_exports: dict[str, Path]) -> None:
    class Shifted:
        name = "shifted"

        def __init__(self, runtime) -> None:
            self.runtime = runtime

        def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
            outputs = dict(self.runtime(images))
            outputs["anomaly_map"] = outputs["anomaly_map"] + 0.01
            outputs["pred_label"] = ~outputs["pred_label"].astype(bool)
            return outputs

    report = check_parity(trained_sir, [Shifted(load_runtime(sir_exports["onnx"]))], synthetic_images(2, (64, 64)))
    (result,) = report.results
    assert result.map_max_abs_diff == pytest.approx(0.01, abs=1e-4)
    assert not result.decisions_match
    assert not report.passed


def test_export_never_overwrites(trained_sir, sir_exports: dict[str, Path]) -> None:
    export_root = sir_exports["onnx"].parents[2]
    before = sir_exports["onnx"].stat().st_mtime_ns
    again = export_model(trained_sir, export_root, export_types=("onnx",))
    assert again["onnx"] == export_root / "weights" / "onnx-2" / "model.onnx"  # a new folder, not a replacement
    assert again["onnx"].is_file()
    assert sir_exports["onnx"].stat().st_mtime_ns == before
    assert not list((export_root / "weights").glob(".partial-*"))


def test_a_score_on_the_threshold_is_borderline_not_a_mismatch(
    trained_sir, sir_exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision flip caused by a score ~1e-6 from the threshold is reported as borderline, not a failure."""
    from anomalib_sir.deploy import parity

    class OnTheThreshold:
        name = "on-threshold"

        def __init__(self, flip: bool) -> None:
            self.runtime, self.flip = load_runtime(sir_exports["onnx"]), flip

        def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            outputs = dict(self.runtime(batch))
            outputs["pred_score"] = np.full_like(outputs["pred_score"], 0.5 + 1e-6)  # normalised threshold: 0.5
            outputs["pred_label"] = np.full_like(outputs["pred_label"], self.flip, dtype=bool)
            return outputs

    monkeypatch.setattr(parity, "TorchRuntime", lambda model: OnTheThreshold(flip=False))  # the reference
    images = synthetic_images(2, (64, 64))
    report = check_parity(trained_sir, [OnTheThreshold(flip=True)], images)
    (result,) = report.results
    assert (result.num_borderline, result.decisions_match) == (2, True)
    assert "2 borderline" in report.format_table()
    strict = check_parity(trained_sir, [OnTheThreshold(flip=True)], images, decision_margin=0.0)
    assert not strict.results[0].decisions_match


def test_openvino_computes_in_float32_unless_asked_otherwise(sir_exports: dict[str, Path]) -> None:
    """OpenVINO's CPU plugin picks bfloat16 on CPUs with bf16 units (maps off by ~0.3); SIR's runtime does not."""
    import openvino as ov

    from anomalib_sir.deploy import OpenVINORuntime

    def precision(runtime: OpenVINORuntime) -> ov.Type:
        return runtime.inferencer.model.get_property("INFERENCE_PRECISION_HINT")

    assert precision(OpenVINORuntime(sir_exports["openvino"])) == ov.Type.f32
    assert precision(load_runtime(sir_exports["openvino"])) == ov.Type.f32
    plugin_default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    assert precision(OpenVINORuntime(sir_exports["openvino"], precision=None)) == plugin_default
