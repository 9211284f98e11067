"""The installed plugin as users meet it: import hook, `anomalib train --model Sir`, export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def _run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_interpreter_start_does_not_import_anomalib(tmp_path: Path) -> None:
    code = "import sys; print('anomalib' in sys.modules, 'anomalib_sir_hook' in sys.modules)"
    out = _run([sys.executable, "-c", code], tmp_path).stdout.split()
    assert out == ["False", "True"]


def test_importing_anomalib_models_registers_sir(tmp_path: Path) -> None:
    code = (
        "import anomalib.models as m, sys; from anomalib.models import AnomalibModule; "
        "print('anomalib_sir' in sys.modules, 'Sir' in {c.__name__ for c in AnomalibModule.__subclasses__()})"
    )
    assert _run([sys.executable, "-c", code], tmp_path).stdout.split() == ["True", "True"]


def test_a_broken_plugin_never_breaks_anomalib(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "anomalib_sir"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('simulated plugin failure')\n")
    code = "import warnings; warnings.simplefilter('always'); import anomalib.models; print('ok')"
    result = _run([sys.executable, "-c", code], tmp_path, env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert result.stdout.strip().endswith("ok")
    assert "simulated plugin failure" in result.stderr


@pytest.mark.slow
def test_cli_train_with_short_name_then_export(tmp_path: Path) -> None:
    common = ["--model", "Sir", "--model.image_size", "[64,64]", "--model.width", "16", "--model.loops", "2"]
    _run(
        [
            ANOMALIB, "train", *common,
            "--data", "anomalib_sir.data.demo.SirDemo", "--data.root", str(tmp_path / "data"),
            "--data.image_size", "64", "--data.num_train", "4", "--data.num_test_normal", "4",
            "--data.num_test_abnormal", "4", "--trainer.max_steps", "3", "--default_root_dir", str(tmp_path / "runs"),
        ],
        tmp_path,
    )  # fmt: skip
    checkpoints = list((tmp_path / "runs").rglob("*.ckpt"))
    assert len(checkpoints) == 1
    for export_type, suffix in (("openvino", ".xml"), ("onnx", ".onnx")):
        _run(
            [ANOMALIB, "export", *common, "--ckpt_path", str(checkpoints[0]), "--export_type", export_type,
             "--export_root", str(tmp_path / export_type)],
            tmp_path,
        )  # fmt: skip
        assert list((tmp_path / export_type).rglob(f"model{suffix}"))
    # anomalib export rebuilds the model from the checkpoint: a different --model.width is refused, not ignored
    other = [*common[:4], "--model.width", "64", *common[6:]]
    refused = subprocess.run(
        [ANOMALIB, "export", *other, "--ckpt_path", str(checkpoints[0]), "--export_type", "onnx",
         "--export_root", str(tmp_path / "other")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "anomalib: error: the checkpoint was trained with other Sir arguments than this model (width=64): "
        'pass --model.width "16"'
    )
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_cli_accepts_the_full_class_path(tmp_path: Path) -> None:
    result = _run([ANOMALIB, "train", "--model", "anomalib_sir.Sir", "--print_config"], tmp_path)
    assert "anomalib_sir" in result.stdout
    assert "loops: 3" in result.stdout


def test_a_bad_sir_argument_is_one_line_not_a_union_traceback(tmp_path: Path) -> None:
    # jsonargparse wraps the constructor's ValueError in a ~180-line union error; the hook prints the message.
    args = [ANOMALIB, "train", "--model", "Sir", "--model.image_size", "[0,0]", "--data", "anomalib_sir.data.SirDemo"]
    result = subprocess.run(
        [*args, "--data.root", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["anomalib: error: Sir: image_size must be (height, width) with positive sides, got (0, 0)"]
    assert "Traceback" not in result.stderr + result.stdout
