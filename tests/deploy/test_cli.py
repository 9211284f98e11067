"""The ``anomalib-sir`` console script: subcommand registry, ``predict`` and ``parity``."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from anomalib_sir import cli

SCRIPT = str(Path(sys.executable).with_name("anomalib-sir"))


def test_console_script_lists_its_subcommands() -> None:
    result = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout
    assert "parity" in result.stdout


def test_cli_module_imports_nothing_heavy() -> None:
    code = "import sys; import anomalib_sir.cli; print('openvino' in sys.modules, 'onnxruntime' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.split() == ["False", "False"]


def test_subcommands_register_once() -> None:
    def configure(parser) -> None:
        parser.add_argument("--value", type=int, default=3)

    @cli.register("test-echo", "test only", configure)
    def run(args) -> int:
        return args.value

    try:
        assert cli.main(["test-echo", "--value", "7"]) == 7
        with pytest.raises(ValueError, match="already registered"):
            cli.register("test-echo", "again", configure)(run)
    finally:
        del cli.SUBCOMMANDS["test-echo"]


def test_predict_subcommand(sir_exports, scans, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "predictions"
    status = cli.main(["predict", str(sir_exports["openvino"]), str(scans["nifti"]), "--output", str(out)])
    assert status == 0
    assert "3 images scored" in capsys.readouterr().out
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert all((out / row["heatmap"]).is_file() for row in rows)


def test_parity_subcommand_on_existing_exports(
    sir_checkpoint: Path, sir_exports, scans, capsys: pytest.CaptureFixture
) -> None:
    args = ["parity", "--ckpt", str(sir_checkpoint), "--openvino", str(sir_exports["openvino"])]
    status = cli.main([*args, "--onnx", str(sir_exports["onnx"]), "--images", str(scans["pngs"])])
    output = capsys.readouterr().out
    assert status == 0, output
    assert "| openvino | 2 |" in output
    assert "| onnxruntime | 2 |" in output
    assert "FAIL" not in output


def test_parity_subcommand_fails_on_a_different_model(
    sir_checkpoint: Path, resnet_exports, capsys: pytest.CaptureFixture
) -> None:
    args = ["parity", "--ckpt", str(sir_checkpoint), "--onnx", str(resnet_exports["onnx"]), "--num-images", "2"]
    assert cli.main(args) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "expected"), [([], "f32"), (["--precision", "bf16"], "bf16"), (["--precision", "plugin"], None)]
)
def test_predict_precision_option(flag: list[str], expected: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalib_sir.deploy

    seen: dict[str, object] = {}

    def fake_predict_scans(*args, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(num_images=1, num_anomalous=0, csv_path="predictions.csv", skipped=[])

    monkeypatch.setattr(anomalib_sir.deploy, "predict_scans", fake_predict_scans)
    assert cli.main(["predict", "model.xml", "scan.png", *flag]) == 0
    assert seen["precision"] == expected
