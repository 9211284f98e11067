"""A tiny benchmark grid end to end: two models, one generated dataset, one seed, via the CLI entry point.

The same cells also run through the Ray executor (skipped when Ray is not installed) and must give the
local executor's results.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomalib_sir.benchmark.cli import main
from anomalib_sir.benchmark.report import CSV_COLUMNS

pytestmark = pytest.mark.slow


def _config(demo_root: Path, results_root: Path) -> dict:
    return {
        "name": "tiny",
        "results_root": str(results_root),
        "image_size": 64,
        "threads": 1,
        "workers": 2,
        "cell_timeout_s": 600,
        "datasets": [  # the block a universal setting config would list as a member
            {
                "class_path": "anomalib_sir.data.SplitFolders",
                "init_args": {"root": str(demo_root), "name": "demo", "normal_dir": "good", "abnormal_dirs": "lesion"},
            }
        ],
        "settings": ["specialized"],
        "shots": [{"k": "all", "seeds": [0]}],
        "models": {
            "SIR": {
                "class_path": "anomalib_sir.Sir",
                "init_args": {"width": 16, "loops": 1},
                "trainer": {"max_steps": 4},
            },
            "PatchCore": {
                "class_path": "anomalib.models.Patchcore",
                "init_args": {"backbone": "tf_efficientnet_lite0", "layers": [2, 3], "coreset_sampling_ratio": 0.1},
                "openvino": False,  # one export (SIR's) keeps the test short; PatchCore's runs in the real grid
            },
        },
        "cost": {"measure": "all", "warmup": 1, "repeats": 2, "batch_sizes": [1, 8], "openvino": True},
    }


@pytest.fixture(scope="module")
def tiny_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    base = tmp_path_factory.mktemp("bench")
    config_path = base / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(_config(demo_root, base / "results")))
    start = time.perf_counter()
    assert main(["--config", str(config_path), "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    (run_dir,) = (base / "results").iterdir()
    return config_path, run_dir, elapsed


def test_tiny_grid_writes_every_column_with_metrics_in_range(tiny_run) -> None:
    _, run_dir, _ = tiny_run
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == list(CSV_COLUMNS)
    assert sorted(frame["model"]) == ["PatchCore", "SIR"]
    assert set(frame["dataset"]) == {"demo"}
    for metric in ("image_AUROC", "image_AUPR", "image_F1Score", "pixel_AUROC", "val_image_AUROC"):
        assert frame[metric].between(0, 1).all(), metric
    assert (frame["n_train"] > 0).all()
    assert (frame["n_test"] > 0).all()
    for cost in ("train_time_s", "torch_ms_b1", "torch_ms_b8", "peak_rss_mb", "model_size_torch_mb"):
        assert (frame[cost] > 0).all(), cost
    # SIR is exported with anomalib and timed on OpenVINO; its scores match torch's
    sir = frame[frame["model"] == "SIR"].iloc[0]
    assert sir["openvino_ms_b1"] > 0
    assert sir["openvino_ms_b8"] > 0
    assert sir["model_size_openvino_mb"] > 0
    assert sir["openvino_max_abs_diff"] < 1e-3
    assert math.isnan(frame[frame["model"] == "PatchCore"].iloc[0]["openvino_ms_b1"])
    summary = (run_dir / "summary.md").read_text()
    assert "| SIR | specialized | full | demo | 1 |" in summary
    for name in ("auroc_by_setting.png", "latency_vs_auroc.png", "config.yaml", "environment.json"):
        assert (run_dir / name).is_file(), name


def test_resume_skips_finished_cells_and_reruns_missing_ones(tiny_run) -> None:
    config_path, run_dir, _ = tiny_run
    cells = sorted((run_dir / "cells").glob("*.json"))
    assert len(cells) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in cells}
    # nothing to do: no cell is recomputed
    assert main(["--config", str(config_path), "--resume", str(run_dir), "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*.json")} == stamps
    # a lost cell is recomputed, the other one is kept
    patchcore = run_dir / "cells" / "PatchCore__specialized__full__seed0__demo.json"
    patchcore.unlink()
    assert main(["--config", str(config_path), "--resume", str(run_dir), "--no-progress"]) == 0
    assert json.loads(patchcore.read_text())["cell"]["model"] == "PatchCore"
    sir = run_dir / "cells" / "SIR__specialized__full__seed0__demo.json"
    assert sir.stat().st_mtime_ns == stamps[sir.name]
    assert len(pd.read_csv(run_dir / "results.csv")) == 2


def test_an_edited_config_recomputes_only_the_cells_it_changes(tiny_run) -> None:
    config_path, run_dir, _ = tiny_run
    stamps = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*.json")}
    edited = yaml.safe_load(config_path.read_text())
    edited["models"]["PatchCore"]["shot_init_args"] = {"all": {"num_neighbors": 3}}
    edited["workers"] = 1  # how the grid runs does not invalidate results
    config_path.write_text(yaml.safe_dump(edited))
    assert main(["--config", str(config_path), "--resume", str(run_dir), "--no-progress"]) == 0
    sir = "SIR__specialized__full__seed0__demo.json"
    patchcore = "PatchCore__specialized__full__seed0__demo.json"
    assert (run_dir / "cells" / sir).stat().st_mtime_ns == stamps[sir]
    assert (run_dir / "cells" / patchcore).stat().st_mtime_ns != stamps[patchcore]
    (superseded,) = (run_dir / "cells" / "superseded").iterdir()
    assert [p.name for p in superseded.iterdir()] == [patchcore]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["models"]["PatchCore"]["shot_init_args"] == {"all": {"num_neighbors": 3}}
    assert len(list(run_dir.glob("config.*.yaml"))) == 1  # the previous config is kept
    assert json.loads((run_dir / "environment.json").read_text())["resumes"][0]["kept_cells"] == 1


def test_cells_record_their_own_time_and_memory(tiny_run) -> None:
    _, run_dir, elapsed = tiny_run
    frame = pd.read_csv(run_dir / "results.csv")
    assert (frame["cell_wall_s"] < elapsed).all()
    assert (frame["cell_cpu_s"] > 0).all()
    assert (frame["peak_rss_mb"] >= frame["peak_rss_fit_mb"]).all()
    assert (frame["finished_unix"] > frame["started_unix"]).all()


RESULT_COLUMNS = ("image_AUROC", "image_AUPR", "image_F1Score", "pixel_AUROC", "val_image_AUROC", "image_threshold")


def test_the_ray_executor_runs_the_same_cells_with_the_same_results(tiny_run, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    config_path, local_dir, _ = tiny_run
    ray_config = yaml.safe_load(config_path.read_text())
    ray_config["results_root"] = str(tmp_path / "ray")
    ray_path = tmp_path / "ray.yaml"
    ray_path.write_text(yaml.safe_dump(ray_config))
    assert main(["--config", str(ray_path), "--executor", "ray", "--no-progress"]) == 0
    (ray_dir,) = (tmp_path / "ray").iterdir()
    local = pd.read_csv(local_dir / "results.csv").set_index("cell_id").sort_index()
    remote = pd.read_csv(ray_dir / "results.csv").set_index("cell_id").sort_index()
    assert list(remote.index) == list(local.index)
    pd.testing.assert_frame_equal(remote[list(RESULT_COLUMNS)], local[list(RESULT_COLUMNS)], atol=1e-6, rtol=0)
