"""Every model is scored by the product's evaluator: raw distances keep their AUROC; validation AUROC per dataset."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomalib_sir.data.evaluation import PerDatasetEvaluator, rank_auroc


def test_raw_distances_far_outside_unit_interval_keep_their_auroc() -> None:
    # PatchCore-like distances (~30-40): a sigmoid or a clamp at 1.0 would give AUROC 0.5.
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(30, int)]
    scores = 30 + rng.normal(size=70) + 1.2 * labels
    auroc = rank_auroc(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels))
    assert auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-4)
    assert 0.7 < auroc < 1.0


class _Datamodule:
    """Two datasets in one loader, told apart by path (as UniversalDataModule does)."""

    dataset_names = ("headct", "chest")

    @staticmethod
    def dataset_index(paths: list[str]) -> torch.Tensor:
        return torch.tensor([0 if p.startswith("h") else 1 for p in paths])


class _Module:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **_: object) -> None:
        self.logged[name] = value


def test_validation_auroc_is_computed_per_dataset_and_logged_as_their_mean() -> None:
    evaluator = PerDatasetEvaluator(print_table=False)
    trainer = SimpleNamespace(datamodule=_Datamodule(), barebones=False)
    module = _Module()
    batch = SimpleNamespace(
        image_path=["h1", "h2", "h3", "c1", "c2", "c3", "c4"],
        pred_score=torch.tensor([31.0, 35.0, 33.0, 0.1, 0.9, 0.2, 0.8]),
        gt_label=torch.tensor([0, 1, 0, 0, 0, 1, 1]),
        pred_label=None,
        anomaly_map=None,
        gt_mask=None,
        pred_mask=None,
    )
    evaluator.on_validation_batch_end(trainer, module, batch, batch, 0)
    evaluator.on_validation_epoch_end(trainer, module)
    table = evaluator.val_table
    assert table.loc["headct", "image_AUROC"] == pytest.approx(1.0)
    assert table.loc["chest", "image_AUROC"] == pytest.approx(0.5)
    assert table.loc["mean", "image_AUROC"] == pytest.approx(0.75)
    assert module.logged["val_image_AUROC"] == pytest.approx(0.75)


def test_normal_only_validation_has_no_auroc_and_logs_nothing() -> None:
    evaluator = PerDatasetEvaluator(print_table=False)
    trainer = SimpleNamespace(datamodule=None, barebones=False)
    module = _Module()
    batch = SimpleNamespace(pred_score=torch.tensor([1.0, 2.0]), gt_label=torch.tensor([0, 0]), image_path=None)
    evaluator.on_validation_batch_end(trainer, module, batch, batch, 0)
    evaluator.on_validation_epoch_end(trainer, module)
    assert np.isnan(evaluator.val_table.loc["dataset", "image_AUROC"])
    assert "val_image_AUROC" not in module.logged
