"""Pooling run folders over split seeds: one 'seed' per split, clear errors on folders that cannot pool."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pandas as pd
import pytest


def _write_cell(cells: Path, shot: str, seed: int, auroc: float) -> None:
    cell = {"cell_id": f"SIR__{shot}__{seed}", "model": "SIR", "setting": "specialized", "shot_label": shot}
    cell |= {"seed": seed, "train_datasets": ["headct"]}
    rows = [{"dataset": "headct", "image_AUROC": auroc, "val_image_AUROC": auroc}]
    (cells / f"SIR__{shot}__{seed}.json").write_text(json.dumps({"cell": cell, "rows": rows, "cost": {}}))


def _run(root: Path, name: str, split_seed: int, one_shot_seeds: tuple[int, ...], headct: float) -> Path:
    """A run folder with one full-shot cell and one 1-shot cell per reference draw."""
    run = root / name
    (run / "cells").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\nsplit_seed: {split_seed}\n")
    _write_cell(run / "cells", "full", 0, headct)
    for seed in one_shot_seeds:
        _write_cell(run / "cells", "1-shot", seed, 0.5)
    return run


def test_pools_runs_with_split_seed_as_seed_and_writes_tables(across_splits, tmp_path: Path, capsys) -> None:
    runs = [_run(tmp_path, f"split{s}", s, (0,), a) for s, a in ((0, 0.8), (3, 0.9))]
    output = across_splits.main([*map(str, runs), "--shot", "full", "--output", str(tmp_path / "out")])
    pooled = pd.read_csv(output / "results.csv")
    assert sorted(pooled["seed"]) == [0, 3]
    assert set(pooled["shot"]) == {"full"}
    summary = (output / "summary.md").read_text()
    assert "split seeds 0, 3" in summary
    assert "0.850 ± 0.071" in summary
    assert "0.850 ± 0.071" in capsys.readouterr().out
    with pytest.raises(FileExistsError):  # never writes into an existing folder
        across_splits.main([*map(str, runs), "--shot", "full", "--output", str(output)])


def test_refuses_what_cannot_be_pooled(across_splits, tmp_path: Path) -> None:
    first = _run(tmp_path, "a", 1, (0,), 0.8)
    twin = _run(tmp_path, "b", 1, (0,), 0.9)
    with pytest.raises(ValueError, match="both use split_seed 1"):
        across_splits.pool_runs([first, twin])
    draws = _run(tmp_path, "c", 2, (0, 1), 0.9)
    with pytest.raises(ValueError, match="several reference draws"):
        across_splits.pool_runs([draws])
    assert len(across_splits.pool_runs([draws], shot="full")) == 1  # the full-shot cell alone pools
    with pytest.raises(ValueError, match=r"no config\.yaml"):
        across_splits.pool_runs([tmp_path])
    with pytest.raises(ValueError, match="no finished cells"):
        across_splits.pool_runs([first], shot="8-shot")


def test_docstring_example_runs(across_splits) -> None:
    assert doctest.testmod(across_splits).failed == 0
