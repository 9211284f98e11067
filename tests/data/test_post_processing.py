"""Rank-preserving post-processing: AUROC survives normal-only validation; statistics are per dataset."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from anomalib.post_processing import PostProcessor
from torchmetrics.functional.classification import binary_auroc

from anomalib_sir.post_processing import RankPreservingPostProcessor, rank_preserving_normalize


def _batch(scores: torch.Tensor, labels: torch.Tensor, paths: list[str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        pred_score=scores.clone(),
        gt_label=labels,
        anomaly_map=scores.clone()[:, None, None, None].expand(-1, 1, 4, 4).contiguous(),
        gt_mask=None,
        pred_label=None,
        pred_mask=None,
        image_path=paths,
    )


def _fit_and_apply(post: PostProcessor, val: torch.Tensor, test: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
    post.on_validation_batch_end(SimpleNamespace(global_step=0), None, _batch(val, torch.zeros_like(val).long()))
    post.on_validation_epoch_end(SimpleNamespace(global_step=0), None)
    batch = _batch(test, labels)
    post.on_test_batch_end(SimpleNamespace(), None, batch, None, 0)
    return batch


def test_normal_only_validation_keeps_auroc_where_anomalib_clamps() -> None:
    generator = torch.Generator().manual_seed(0)
    val = torch.rand(20, generator=generator)  # normal validation scores in [0, 1)
    test_normal = torch.rand(30, generator=generator) + 0.5
    test_anomalous = torch.rand(30, generator=generator) * 5 + 0.8  # mostly far above the validation maximum
    test = torch.cat([test_normal, test_anomalous])
    labels = torch.cat([torch.zeros(30), torch.ones(30)]).long()
    raw_auroc = float(binary_auroc(test, labels))

    anomalib = _fit_and_apply(PostProcessor(), val, test, labels)
    assert int((anomalib.pred_score == 1.0).sum()) > 20  # clamped ties
    assert float(binary_auroc(anomalib.pred_score, labels)) < raw_auroc - 0.05

    post = RankPreservingPostProcessor()
    ours = _fit_and_apply(post, val, test, labels)
    assert float(binary_auroc(ours.pred_score, labels)) == raw_auroc
    assert torch.equal(torch.argsort(ours.pred_score), torch.argsort(test))
    assert bool(((ours.pred_score > 0) & (ours.pred_score < 1)).all())
    # the threshold came from the normal validation scores: mean + 2 std
    expected = float(val.double().mean() + 2 * val.double().std())
    assert abs(float(post.image_threshold) - expected) < 1e-5
    assert ours.pred_label.tolist() == (test > float(post.image_threshold)).tolist()


def test_normalisation_is_strictly_monotonic_over_a_wide_range() -> None:
    values = torch.cat([torch.linspace(-50, 50, 2001), torch.logspace(2, 3.5, 200)])
    out = rank_preserving_normalize(values, torch.tensor(0.0), torch.tensor(1.0))
    assert bool((out.diff() > 0).all())
    assert float(rank_preserving_normalize(torch.tensor(3.0), torch.tensor(3.0), torch.tensor(2.0))) == 0.5
    unfitted = rank_preserving_normalize(values, torch.tensor(float("nan")), torch.tensor(float("nan")))
    assert torch.equal(unfitted, values)


def test_statistics_are_fitted_and_applied_per_dataset() -> None:
    paths = {0: [f"a/{i}" for i in range(8)], 1: [f"b/{i}" for i in range(8)]}
    index = {p: d for d, ps in paths.items() for p in ps}
    datamodule = SimpleNamespace(dataset_index=lambda ps: torch.tensor([index.get(p, -1) for p in ps]))
    trainer = SimpleNamespace(datamodule=datamodule, global_step=7)
    post = RankPreservingPostProcessor()
    # dataset a scores around 1, dataset b around 100: one batch mixing both
    val = torch.tensor([1.0, 1.1, 0.9, 1.05, 100.0, 110.0, 90.0, 105.0])
    val_paths = paths[0][:4] + paths[1][:4]
    post.on_validation_batch_end(trainer, None, _batch(val, torch.zeros(8).long(), val_paths))
    post.on_validation_epoch_end(trainer, None)
    assert post.dataset_stats.shape == (2, 4)
    assert int(post.fitted_step) == 7
    assert post.dataset_stats[0, 0] < 2 < 90 < post.dataset_stats[1, 0]

    test = torch.tensor([1.0, 5.0, 100.0, 500.0])  # normal a, anomalous a, normal b, anomalous b
    batch = _batch(test, torch.tensor([0, 1, 0, 1]), [paths[0][5], paths[0][6], paths[1][5], paths[1][6]])
    post.on_test_batch_end(trainer, None, batch, None, 0)
    # a pooled threshold would call b's normal image anomalous
    assert batch.pred_label.tolist() == [False, True, False, True]
    assert batch.anomaly_map.shape == (4, 1, 4, 4)
    assert batch.pred_mask[:, 0, 0, 0].tolist() == [False, True, False, True]

    # statistics survive a checkpoint round trip, whatever the number of datasets
    restored = RankPreservingPostProcessor()
    restored.load_state_dict(post.state_dict())
    assert torch.allclose(restored.dataset_stats, post.dataset_stats, equal_nan=True)
    # the exported/forward path uses the pooled statistics
    from anomalib.data import InferenceBatch

    out = restored(InferenceBatch(pred_score=torch.tensor([0.0, 1e4]), anomaly_map=torch.zeros(2, 1, 4, 4)))
    assert out.pred_label.tolist() == [False, True]


def test_threshold_uses_f1_when_validation_has_anomalies() -> None:
    post = RankPreservingPostProcessor()
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9, 1.0])
    post.fit([scores], [torch.tensor([0, 0, 0, 1, 1])])
    threshold = float(post.dataset_stats[0, 0])
    assert 0.3 <= threshold <= 0.9


def test_f1_threshold_sits_between_validation_scores() -> None:
    """The fitted threshold keeps anomalib's F1-optimal decisions on validation, with a margin to every score."""
    from anomalib_sir.post_processing import fit_threshold_and_scale

    scores = torch.tensor([0.10, 0.20, 0.30, 0.70, 0.80, 0.90])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    threshold, _ = fit_threshold_and_scale(scores, labels)
    assert 0.30 < threshold < 0.70
    assert ((scores > threshold).long() == labels).all()
    assert (scores - threshold).abs().min() > 0.1
