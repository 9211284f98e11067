"""Metrics keep the ranking of raw scores; F1 uses the threshold fitted on validation only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from anomalib_sir.benchmark.worker import evaluate


def _batches(scores: np.ndarray, labels: np.ndarray, size: int = 7) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            pred_score=torch.tensor(scores[i : i + size], dtype=torch.float32),
            gt_label=torch.tensor(labels[i : i + size]),
            anomaly_map=None,
            gt_mask=None,
        )
        for i in range(0, len(scores), size)
    ]


def test_raw_distances_far_outside_unit_interval_keep_their_auroc() -> None:
    # PatchCore-like distances (~30-40): a sigmoid or a clamp at 1.0 would give AUROC 0.5.
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(30, int)]
    scores = 30 + rng.normal(size=70) + 1.2 * labels
    val_labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    val_scores = 30 + rng.normal(size=20) + 1.2 * val_labels
    metrics = evaluate(_batches(val_scores, val_labels), _batches(scores, labels))
    assert abs(metrics["image_AUROC"] - roc_auc_score(labels, scores)) < 1e-4
    assert abs(metrics["image_AUPR"] - average_precision_score(labels, scores)) < 0.05
    threshold = metrics["image_threshold"]
    assert val_scores.min() <= threshold <= val_scores.max()  # fitted on validation scores
    assert abs(metrics["image_F1Score"] - f1_score(labels, scores > threshold)) < 1e-6
    assert np.isnan(metrics["pixel_AUROC"])


def test_threshold_does_not_look_at_test_scores() -> None:
    val_labels = np.array([0, 0, 1, 1])
    val_scores = np.array([0.1, 0.2, 0.8, 0.9])
    labels = np.array([0, 1, 0, 1])
    low = evaluate(_batches(val_scores, val_labels), _batches(np.array([0.1, 0.3, 0.35, 0.4]), labels))
    high = evaluate(_batches(val_scores, val_labels), _batches(np.array([5.0, 7.0, 7.5, 8.0]), labels))
    assert low["image_threshold"] == high["image_threshold"]
    assert low["image_AUROC"] == high["image_AUROC"] == 0.75
    assert low["image_F1Score"] == 0.0  # nothing above the validation threshold
    assert high["image_F1Score"] == pytest.approx(f1_score(labels, [1, 1, 1, 1]))


def test_pixel_auroc_is_computed_when_masks_exist() -> None:
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[2:, 2:4, 2:4] = True
    maps = torch.rand(4, 1, 8, 8) + 50 * masks[:, None].float()  # raw maps far above 1
    batch = SimpleNamespace(
        pred_score=maps.amax(dim=(1, 2, 3)), gt_label=torch.tensor([0, 0, 1, 1]), anomaly_map=maps, gt_mask=masks
    )
    metrics = evaluate([batch], [batch])
    assert metrics["pixel_AUROC"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["image_AUROC"] == pytest.approx(1.0, abs=1e-6)
