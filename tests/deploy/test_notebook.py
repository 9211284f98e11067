"""The one-shot notebook executes end to end (tiny generated data, a few steps)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "sir_one_shot.ipynb"


def test_one_shot_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIR_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("SIR_NOTEBOOK_OUTPUT", str(tmp_path / "runs"))
    monkeypatch.setenv("ANOMALIB_SIR_CACHE", str(tmp_path / "cache"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "FAST=True  real data=False" in outputs
    assert "| openvino |" in outputs
    assert "FAIL" not in outputs
    assert "16 images" in outputs  # every test image was scored
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "predictions" / "predictions.csv").is_file()
    assert len(list((run_dir / "predictions" / "heatmaps").glob("*.png"))) == 16
    figures = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if "data" in o]
    assert any("image/png" in o["data"] for o in figures)  # the heatmaps were shown
