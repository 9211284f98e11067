"""The ``anomalib-sir`` console script: subcommand registry, ``predict``, ``export`` and ``parity``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from anomalib_sir import cli

SCRIPT = str(Path(sys.executable).with_name("anomalib-sir"))


def _cli(*args: str | Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would (own process, one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [SCRIPT, *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


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
    printed = capsys.readouterr().out
    assert "3 images scored" in printed
    assert f"-> {out / 'predictions.csv'}" in printed  # where the results went
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
        return SimpleNamespace(summary=lambda: "1 images scored")

    monkeypatch.setattr(anomalib_sir.deploy, "predict_scans", fake_predict_scans)
    assert cli.main(["predict", "model.xml", "scan.png", *flag]) == 0
    assert seen["precision"] == expected


# ------------------------------------------------------------------------ a user's first hour: predict


def _predict_case(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], str]:
    """Arguments of one failing ``predict`` call and the text its one-line error must contain."""
    good = tmp_path / "good"
    good.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40), dtype=np.uint8)).save(good / "a.png")
    if case == "checkpoint-as-model":
        return [str(request.getfixturevalue("sir_checkpoint")), str(good)], "is a Sir training checkpoint"
    if case == "missing-model":
        return [str(tmp_path / "exports" / "model.xml"), str(good)], "exported model not found"
    model = str(request.getfixturevalue("sir_exports")["openvino"])
    if case == "unreadable-file":
        (tmp_path / "bad.png").write_text("not an image")
        return [model, "bad.png"], "bad.png: not a recognised image format"
    if case == "empty-folder":
        (tmp_path / "empty").mkdir()
        return [model, "empty"], "no image files in empty"
    if case == "missing-input":
        return [model, "scans"], "input not found: scans"
    if case == "corrupt-file-after-good-ones":  # fails midway, after the output folder was created
        (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        return [model, str(good), "corrupt.png"], "corrupt.png"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "unreadable-file",
        "missing-model",
        "empty-folder",
        "missing-input",
        "checkpoint-as-model",
        "corrupt-file-after-good-ones",
    ],
)
def test_predict_errors_are_one_line_and_leave_no_output_folder(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    args, expected = _predict_case(case, request, tmp_path)
    result = _cli("predict", *args, "--output", "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = _lines(result.stderr)  # one line: no traceback, no warnings
    assert line.startswith("anomalib-sir predict: error: ")
    assert expected in line
    assert "; " in line  # ... followed by the fix
    assert result.stdout == ""
    assert not list(tmp_path.glob("out*"))  # nothing half-written, so the next run gets "out" again


def test_predict_errors_show_the_traceback_with_verbose(sir_exports, tmp_path: Path) -> None:
    result = _cli("predict", sir_exports["openvino"], "scans", "--output", "out", "--verbose", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert _lines(result.stderr)[-1] == (
        "anomalib-sir predict: error: input not found: scans; check the path (files and folders are accepted)"
    )


def test_predict_skips_an_unreadable_png_in_a_folder(sir_exports, scans, tmp_path: Path) -> None:
    (scans["pngs"] / "broken.png").write_text("not a png")  # named like an image, content is not
    result = _cli("predict", sir_exports["openvino"], scans["pngs"], "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (warning,) = _lines(result.stderr)  # one warning line, nothing else (no third-party notices either)
    assert warning.startswith("WARNING Skipping unreadable file")
    assert str(scans["pngs"] / "broken.png") in warning
    (summary,) = _lines(result.stdout)
    assert summary.startswith("2 images scored: ")
    assert "1 unreadable files skipped" in summary
    assert summary.endswith("-> out/predictions.csv, heatmaps in out/heatmaps/")
    with (tmp_path / "out" / "predictions.csv").open(newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert rows["broken.png"]["decision"] == "unreadable"
    assert rows["broken.png"]["pred_score"] == ""
    assert "not a known image format" in rows["broken.png"]["error"]
    assert {rows["a.png"]["decision"], rows["b16.png"]["decision"]} <= {"normal", "anomalous"}


def test_verbose_predict_logs_each_line_once(sir_exports, scans, tmp_path: Path) -> None:
    result = _cli("-v", "predict", sir_exports["openvino"], scans["pngs"], "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    assert any(line.startswith("INFO ") for line in lines)
    assert len(lines) == len(set(lines)), lines
    assert "FutureWarning" not in result.stderr


# ------------------------------------------------------------------------- checkpoints of other models


@pytest.mark.parametrize("command", ["export", "parity"])
def test_commands_name_a_foreign_checkpoint(command: str, padim_checkpoint: Path, tmp_path: Path) -> None:
    result = _cli(command, "--ckpt", padim_checkpoint, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = _lines(result.stderr)
    assert line.startswith(f"anomalib-sir {command}: error: {padim_checkpoint} is a Padim model checkpoint, not Sir")
    assert "anomalib export --model Padim" in line


def test_predict_names_a_foreign_checkpoint_given_as_model(padim_checkpoint: Path, scans, tmp_path: Path) -> None:
    result = _cli("predict", padim_checkpoint, scans["pngs"], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = _lines(result.stderr)
    assert f"{padim_checkpoint} is a Padim training checkpoint, not an exported model" in line
    assert "anomalib export --model Padim" in line


# ----------------------------------------------------------------------------------------------- export


def test_export_subcommand_never_overwrites_and_prints_the_path(sir_checkpoint: Path, tmp_path: Path) -> None:
    earlier = tmp_path / "exports" / "weights" / "onnx" / "model.onnx"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier export")
    result = _cli("export", "--ckpt", sir_checkpoint, "--output", "exports", "--format", "onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert earlier.read_bytes() == b"an earlier export"
    new = tmp_path / "exports" / "weights" / "onnx-2" / "model.onnx"
    assert new.is_file()
    assert _lines(result.stdout) == [
        "onnx: exports/weights/onnx-2/model.onnx",
        "score scans with: anomalib-sir predict exports/weights/onnx-2/model.onnx SCANS...",
    ]
    (warning,) = _lines(result.stderr)  # the new folder is named; no export chatter, no traceback
    assert "exports/weights/onnx already holds an export" in warning
    assert not list((tmp_path / "exports" / "weights").glob(".partial-*"))
