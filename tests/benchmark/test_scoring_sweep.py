"""The scoring sweep scores one trained model in every combination and ranks variants by validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from anomalib_sir.models.sir.torch_model import SirModel


def test_variants_cover_every_combination_and_include_the_models_own_scoring(sweep) -> None:
    model = SirModel(pre_trained=False, layers=(1, 2, 3), width=16, loops=2).eval()
    images = torch.rand(3, 3, 64, 64)
    maps = sweep.per_scale_maps(model, images, size=16, flip=True)
    assert (len(maps), len(maps[0]), len(maps[0][0])) == (2, 2, 3)  # views x loops x scales
    scores = sweep.score_variants(maps)
    # 7 stage subsets (4 of them with 2+ stages get a product variant) x 2 views x 2 loop choices x 3 sigmas x 6 top-k
    assert len(scores) == (7 + 4) * 2 * 2 * len(sweep.SIGMAS) * len(sweep.TOPK_RATIOS)
    assert all(s.shape == (3,) and torch.isfinite(s).all() for s in scores.values())
    assert sweep.reference_variant(model, 3) in scores
    # A wider top-k can only lower the mean of the top values.
    narrow = scores["view1/last/stages0+1+2/mean/sigma4/top0.01"]
    wide = scores["view1/last/stages0+1+2/mean/sigma4/top1"]
    assert (wide <= narrow + 1e-6).all()


def test_ranking_is_by_validation_mean_over_datasets_then_seeds(sweep) -> None:
    rows = [
        # variant "a": better on test, worse on validation -> must rank below "b".
        {"seed": seed, "dataset": d, "split": split, "variant": v, "auroc": auroc}
        for seed in (0, 1)
        for d in ("x", "y")
        for v, split, auroc in (("a", "val", 0.6), ("a", "test", 0.9), ("b", "val", 0.8), ("b", "test", 0.7))
    ]
    table = sweep.rank(pd.DataFrame(rows))
    assert list(table.index) == ["b", "a"]
    assert table.loc["b", "val_mean"] == pytest.approx(0.8)
    assert table.loc["a", "test_mean"] == pytest.approx(0.9)


def test_command_line_overrides_reach_the_swept_model(sweep) -> None:
    """--init-args beat the config's per-shot arguments, --max-steps the step budget, --set top-level keys."""
    config_path = Path(__file__).resolve().parents[2] / "configs" / "benchmark.yaml"
    args = sweep.build_parser().parse_args(
        [
            *("--config", str(config_path), "--setting", "specialized", "--shot", "all"),
            *("--init-args", '{"knn_weight": 0}', "--max-steps", "123", "--set", "image_size=64"),
        ]
    )
    config, cells = sweep.sweep_cells(args)
    spec = config.models["SIR"]
    assert config.image_size == 64
    assert spec.trainer["max_steps"] == 123
    assert spec.init_args_for(None)["knn_weight"] == 0
    assert sorted(c.train_datasets for c in cells) == [("chest_xray",), ("headct",)]
    assert all(c.model == "SIR" and c.setting == "specialized" and c.shot is None for c in cells)


def test_a_model_missing_from_the_config_is_named(sweep) -> None:
    config_path = Path(__file__).resolve().parents[2] / "configs" / "benchmark.yaml"
    args = sweep.build_parser().parse_args(["--config", str(config_path), "--model", "Nope"])
    with pytest.raises(SystemExit, match="'Nope' is not in"):
        sweep.sweep_cells(args)
