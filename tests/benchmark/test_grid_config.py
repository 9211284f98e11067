"""Benchmark config parsing and grid expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalib_sir.benchmark.cli import parse_overrides
from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.grid import Cell, expand_grid

BASE = {
    "datasets": [
        {"class_path": "anomalib_sir.data.LabelsFile", "init_args": {"root": "x/headct"}},
        {"class_path": "anomalib_sir.data.ClassFolders", "init_args": {"root": "y/train", "name": "cxr"}},
    ],
    "models": {"SIR": {"class_path": "anomalib_sir.Sir"}, "RD": {"class_path": "anomalib.models.Padim"}},
    "shots": [{"k": 1, "seeds": [0, 1, 2]}, {"k": "all", "seeds": [0]}],
}


def test_full_grid_has_every_model_setting_shot_seed_and_dataset() -> None:
    cells = expand_grid(BenchmarkConfig.from_dict(BASE))
    # (3 one-shot seeds + 1 full) x (2 specialized + 1 universal) x 2 models
    assert len(cells) == 4 * 3 * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    universal = [c for c in cells if c.setting == "universal"]
    assert all(c.train_datasets == c.test_datasets == ("headct", "cxr") for c in universal)
    assert {c.seed for c in cells if c.shot is None} == {0}
    # first_seed: cost measured once per (model, setting, shot, datasets)
    measured = [c for c in cells if c.measure_cost]
    assert {c.seed for c in measured} == {0}
    assert len(measured) == 2 * 3 * 2


def test_cell_round_trips_through_json_form() -> None:
    cell = expand_grid(BenchmarkConfig.from_dict(BASE))[5]
    assert Cell.from_dict(cell.to_dict()) == cell


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"settings": ["transductive"]}, "settings"),
        ({"unknown_key": 1}, "Unknown"),
        ({"cost": {"measure": "sometimes"}}, "cost.measure"),
        ({"models": {}}, "at least one"),
        ({"datasets": {"headct": {"root": "x"}}}, "list of"),
        ({"datasets": [{"init_args": {"root": "x"}}]}, "class_path"),
        ({"datasets": [{"class_path": "anomalib_sir.data.Nope", "init_args": {"root": "x"}}]}, "cannot be imported"),
        ({"datasets": [{"class_path": "anomalib_sir.data.ClassFolders", "init_args": {"root": "a/x"}}] * 2}, "Two"),
        ({"val_split_mode": "same_as_test"}, "val_split_mode"),
        ({"executor": "slurm"}, "executor"),
    ],
)
def test_invalid_configs_are_rejected(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig.from_dict({**BASE, **override})


def test_shipped_configs_parse_and_the_real_grid_is_the_issue_grid() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    smoke = BenchmarkConfig.from_yaml(root / "benchmark_smoke.yaml")
    assert smoke.image_size % 32 == 0  # Reverse Distillation needs multiples of 32
    real = BenchmarkConfig.from_yaml(root / "benchmark.yaml", parse_overrides(["workers=1"]))
    assert real.workers == 1
    assert set(real.models) == {"SIR", "PatchCore", "RD"}
    assert list(real.datasets) == ["headct", "chest_xray", "busi", "knee_oa", "odir_fundus"]
    assert real.val_split_mode == "from_test"
    assert [(s.k, len(s.seeds)) for s in real.shots] == [(1, 5), (None, 1)]
    assert len(expand_grid(real)) == 108  # 5 draws x (5 specialised + 1 universal) x 3 models + 18 full-shot


def test_a_setting_config_member_block_is_a_grid_dataset() -> None:
    """The same {class_path, init_args} block works as a universal member and as a grid dataset."""
    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    members = yaml.safe_load((root / "one_shot_universal.yaml").read_text())["data"]["init_args"]["members"]
    config = BenchmarkConfig.from_dict({**BASE, "datasets": members})
    assert list(config.datasets) == [m["init_args"]["name"] for m in members]
    assert config.to_dict()["datasets"] == members  # written back as the blocks it was read from


@pytest.mark.parametrize("name", ["benchmark.yaml", "benchmark_smoke.yaml"])
def test_every_grid_model_builds(name: str) -> None:
    """Each model's constructor arguments exist and are valid (a typo would only fail hours into a run)."""
    from anomalib_sir.benchmark.data import import_object

    config = BenchmarkConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / name)
    for spec in config.models.values():
        for shot in {s.k for s in config.shots}:
            args = {**spec.init_args_for(shot), "pre_trained": False}
            if spec.class_path == "anomalib_sir.Sir":
                args["image_size"] = (64, 64)
            import_object(spec.class_path)(**args)  # no weights needed to check args


def test_cli_lists_the_grid_and_rejects_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anomalib_sir.benchmark import main

    config = Path(__file__).resolve().parents[2] / "configs" / "benchmark.yaml"
    assert main(["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "108 cells"
    assert "SIR__universal__1-shot__seed2__headct+chest_xray+busi+knee_oa+odir_fundus " in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\n")
    assert main(["--config", str(bad), "--dry-run"]) == 2
    assert main(["--dry-run"]) == 2  # --config is required unless only re-reporting
    (tmp_path / "run" / "cells").mkdir(parents=True)
    assert main(["--report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "results.csv").is_file()
