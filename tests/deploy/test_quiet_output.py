"""Start-up noise: no known third-party deprecation notices, each log line printed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = str(Path(sys.executable).with_name("anomalib-sir"))


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_importing_anomalib_models_prints_no_known_deprecation_notices(tmp_path: Path) -> None:
    code = (
        "import warnings, anomalib.models\n"
        "warnings.warn('a FutureWarning of someone else', FutureWarning)\n"  # other notices still show
        "print('ok')\n"
    )
    result = _python(code, tmp_path)
    assert result.stdout.strip() == "ok", result.stderr
    assert "timm.models.layers is deprecated" not in result.stderr
    assert "dinov2 package is deprecated" not in result.stderr
    assert "a FutureWarning of someone else" in result.stderr


def test_anomalib_configure_logger_prints_each_line_once(tmp_path: Path) -> None:
    """anomalib's CLI calls ``configure_logger``: basicConfig's handler plus a Rich one printed everything twice."""
    code = (
        "import logging\n"
        "import anomalib.models\n"
        "from anomalib.loggers import configure_logger\n"  # as anomalib.cli does
        "configure_logger()\n"
        "logging.getLogger('anomalib.engine').info('engine-line')\n"
        "logging.getLogger('lightning.pytorch').info('lightning-line')\n"
        "logging.getLogger('onnx_ir.passes').info('graph-pass-line')\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("engine-line") == 1
    assert output.count("lightning-line") == 1
    assert "graph-pass-line" not in output  # hundreds of these per ONNX export


def test_help_is_quiet_and_instant(tmp_path: Path) -> None:
    result = subprocess.run([SCRIPT, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0
    assert result.stderr == ""
    assert "export" in result.stdout
    assert "--verbose" in result.stdout
