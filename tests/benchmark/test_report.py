"""Report: per-run CSV, mean ± std markdown table over seeds, and the two PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from anomalib_sir.benchmark.report import CSV_COLUMNS, collect_results, markdown_table, summarize, write_report


def _write_cell(cells: Path, model: str, setting: str, shot: str, seed: int, aurocs: dict[str, float]) -> None:
    cell_id = f"{model}__{setting}__{shot}__seed{seed}"
    result = {
        "cell": {
            "cell_id": cell_id,
            "model": model,
            "setting": setting,
            "shot_label": shot,
            "seed": seed,
            "train_datasets": list(aurocs),
        },
        "rows": [
            {
                "dataset": d,
                "n_train": 1,
                "n_val": 4,
                "n_test": 10,
                "image_AUROC": a,
                "image_AUPR": a,
                "image_F1Score": a,
            }
            for d, a in aurocs.items()
        ],
        "cost": {"train_time_s": 2.0 + seed, "torch_ms_b1": 10.0, "openvino_ms_b1": 4.0 if model == "SIR" else 8.0},
    }
    (cells / f"{cell_id}.json").write_text(json.dumps(result))


def test_write_report_aggregates_seeds_and_draws_plots(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    for seed, (a, b) in enumerate([(0.6, 0.7), (0.8, 0.9)]):
        _write_cell(cells, "SIR", "universal", "1-shot", seed, {"headct": a, "cxr": b})
    _write_cell(cells, "PatchCore", "universal", "1-shot", 0, {"headct": 0.55, "cxr": 0.65})
    (cells / "RD__universal__1-shot__seed0.error.json").write_text(
        json.dumps({"cell": {"cell_id": "RD__universal__1-shot__seed0"}, "error": "process exited with -9"})
    )

    paths = write_report(tmp_path)

    frame = pd.read_csv(paths["csv"])
    assert list(frame.columns) == list(CSV_COLUMNS)
    assert len(frame) == 6  # 3 cells x 2 test datasets
    summary = summarize(frame)
    sir_headct = summary[(summary.model == "SIR") & (summary.dataset == "headct")].iloc[0]
    assert sir_headct.seeds == 2
    assert abs(sir_headct.image_AUROC_mean - 0.7) < 1e-9
    assert abs(sir_headct.image_AUROC_std - pd.Series([0.6, 0.8]).std()) < 1e-9
    text = paths["summary"].read_text()
    assert "0.700 ± 0.141" in text
    assert "RD__universal__1-shot__seed0" in text  # failures are listed
    for key in ("auroc_plot", "latency_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_run_writes_a_header_only_csv(tmp_path: Path) -> None:
    (tmp_path / "cells").mkdir()
    paths = write_report(tmp_path)
    assert list(pd.read_csv(paths["csv"]).columns) == list(CSV_COLUMNS)
    assert "No finished cell" in paths["summary"].read_text()
    assert collect_results(tmp_path).empty


def test_markdown_table_has_one_line_per_group() -> None:
    frame = pd.DataFrame(
        {
            "model": ["SIR", "SIR", "RD"],
            "setting": ["specialized"] * 3,
            "shot": ["full"] * 3,
            "dataset": ["a", "b", "a"],
            "seed": [0, 0, 0],
            "image_AUROC": [0.9, 0.8, 0.7],
        }
    )
    table = markdown_table(summarize(frame))
    assert len(table.splitlines()) == 2 + 3
    assert "| SIR | specialized | full | a | 1 | 0.900 |" in table
