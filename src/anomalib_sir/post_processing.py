"""Rank-preserving post-processing: normalised scores keep their order, thresholds work without anomalies.

anomalib's :class:`~anomalib.post_processing.PostProcessor` min-max normalises scores with the validation
range and **clamps** to ``[0, 1]``. With a normal-only validation set (the one-/few-shot and universal
settings) every anomalous test image scores above the validation maximum, so all of them become ``1.0``:
their order is lost and image AUROC collapses towards 0.5.

:class:`RankPreservingPostProcessor` keeps anomalib's interface (it *is* a ``PostProcessor``: same buffers,
``image_threshold``, sensitivity, export path) but

* normalises with a strictly increasing map centred on the threshold, without clamping:
  ``0.5 + 0.5 · z / (1 + |z|)`` with ``z = (score − threshold) / scale`` – the threshold maps to 0.5,
  scores stay in ``(0, 1)`` and distinct scores stay distinct (in float32 up to ``|z| ≈ 10⁴``);
* fits the threshold on validation scores: anomalib's F1-adaptive threshold when validation holds
  anomalies, else ``mean + normal_std · std`` of the normal validation scores; ``scale`` is the standard
  deviation of the normal validation scores;
* fits one (threshold, scale) per dataset – per member of :class:`~anomalib_sir.data.UniversalDataModule`,
  whose ``dataset_index(image_paths)`` says which member an image belongs to – and applies each image's own
  dataset statistics at test/predict time; :meth:`forward` (exported models, single images) uses a fit on
  all validation scores pooled;
* refits on the validation data before testing when the last fit is missing or older than the weights
  (training stopped by ``max_steps`` before a validation epoch). Test data is never used.

Example:
    >>> import torch
    >>> scores = torch.tensor([1.0, 2.0, 50.0, 51.0])
    >>> normalised = rank_preserving_normalize(scores, torch.tensor(2.0), torch.tensor(0.5))
    >>> bool((normalised.diff() > 0).all()), float(normalised[1])
    (True, 0.5)

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer

logger = logging.getLogger(__name__)

#: Columns of :attr:`RankPreservingPostProcessor.dataset_stats`.
STAT_COLUMNS = ("image_threshold", "image_scale", "pixel_threshold", "pixel_scale")


def rank_preserving_normalize(values: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Map scores strictly increasingly into ``(0, 1)``, the threshold onto 0.5 (NaN statistics: unchanged).

    Example:
        >>> import torch
        >>> out = rank_preserving_normalize(torch.tensor([0.0, 1.0, 3.0]), torch.tensor(1.0), torch.tensor(1.0))
        >>> [round(v, 4) for v in out.tolist()]
        [0.25, 0.5, 0.8333]

    """
    z = (values - threshold) / scale
    normalised = 0.5 + 0.5 * z / (1.0 + z.abs())
    unfitted = torch.isnan(threshold) | torch.isnan(scale)
    return torch.where(unfitted, values, normalised)


def fit_threshold_and_scale(
    scores: torch.Tensor, labels: torch.Tensor | None, normal_std: float = 2.0
) -> tuple[float, float]:
    """``(threshold, scale)`` for one dataset's validation scores.

    With anomalies among the labels: anomalib's F1-adaptive threshold, moved halfway to the next lower
    validation score (so that ``score > threshold`` reproduces the F1-optimal set, with a margin).
    Without: ``mean + normal_std · std`` of the (normal) scores. ``scale`` is the std of the normal
    scores (of all scores with fewer than two normals); a degenerate std (one image, identical scores)
    falls back to ``max(0.1·|mean|, 1e-6)``.

    Example:
        >>> import torch
        >>> fit_threshold_and_scale(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 0]), normal_std=1.0)
        (3.0, 1.0)

    """
    scores = scores.detach().double().flatten()
    if scores.numel() == 0:
        return float("nan"), float("nan")
    labels = labels.detach().flatten() if labels is not None else torch.zeros_like(scores, dtype=torch.long)
    normal = scores[labels == 0]
    reference = normal if len(normal) >= 2 else scores
    mean = float(reference.mean()) if len(reference) else 0.0
    std = float(reference.std()) if len(reference) >= 2 else 0.0
    scale = std if std > 1e-12 * max(1.0, abs(mean)) else max(0.1 * abs(mean), 1e-6)
    if bool((labels == 1).any()) and len(normal):
        metric = F1AdaptiveThreshold(fields=["pred_score", "gt_label"])
        metric.update(SimpleNamespace(pred_score=scores.float(), gt_label=labels.long()))
        threshold = float(metric.compute())
        # anomalib's threshold is the lowest validation score of the F1-optimal "anomalous" set (a PR-curve
        # threshold, i.e. ``score >= t``), but labels are ``score > t``. Move it halfway down to the next
        # lower score: the F1-optimal set is then labelled anomalous, with a margin to every validation
        # score (exported runtimes differ from torch by ~1e-6).
        lower = scores[scores < threshold]
        if len(lower):
            threshold = 0.5 * (threshold + float(lower.max()))
    else:
        threshold = mean + normal_std * scale
    return threshold, scale


class RankPreservingPostProcessor(PostProcessor):
    """anomalib ``PostProcessor`` with monotonic normalisation and per-dataset, anomaly-free threshold fitting.

    Args:
        enable_normalization: normalise scores and maps (strictly increasing, no clamping).
        enable_thresholding: predict labels/masks with the fitted thresholds.
        enable_threshold_matching: use the image threshold for pixels when no pixel threshold can be fitted.
        image_sensitivity, pixel_sensitivity: as in anomalib (normalised threshold ``1 - sensitivity``).
        normal_std: threshold ``mean + normal_std · std`` of normal validation scores when validation has no
            anomalies.
        per_dataset: fit and apply statistics per dataset (universal members); ``False``: pooled only.
        refit_before_test: refit on the validation data at test/predict start if the fit is missing or stale.

    Example:
        >>> import torch
        >>> from anomalib.data import InferenceBatch
        >>> post = RankPreservingPostProcessor()
        >>> post.fit([torch.tensor([1.0, 2.0, 3.0])], [torch.tensor([0, 0, 0])])
        >>> out = post(InferenceBatch(pred_score=torch.tensor([0.0, 10.0, 11.0]), anomaly_map=torch.zeros(3, 4, 4)))
        >>> out.pred_label.tolist(), bool(out.pred_score[2] > out.pred_score[1])
        ([False, True, True], True)

    """

    def __init__(
        self,
        enable_normalization: bool = True,
        enable_thresholding: bool = True,
        enable_threshold_matching: bool = True,
        image_sensitivity: float = 0.5,
        pixel_sensitivity: float = 0.5,
        normal_std: float = 2.0,
        per_dataset: bool = True,
        refit_before_test: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            enable_normalization=enable_normalization,
            enable_thresholding=enable_thresholding,
            enable_threshold_matching=enable_threshold_matching,
            image_sensitivity=image_sensitivity,
            pixel_sensitivity=pixel_sensitivity,
            **kwargs,
        )
        self.normal_std = normal_std
        self.per_dataset = per_dataset
        self.refit_before_test = refit_before_test
        self.register_buffer("image_scale", torch.tensor(float("nan")))
        self.register_buffer("pixel_scale", torch.tensor(float("nan")))
        self.register_buffer("dataset_stats", torch.empty(0, len(STAT_COLUMNS)))
        self.register_buffer("fitted_step", torch.tensor(-1, dtype=torch.long))
        self.image_scale: torch.Tensor
        self.pixel_scale: torch.Tensor
        self.dataset_stats: torch.Tensor
        self.fitted_step: torch.Tensor
        self._reset_accumulators()

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "normal_std", "per_dataset", "refit_before_test")

    def _reset_accumulators(self) -> None:
        self._scores: dict[int, list[torch.Tensor]] = {}
        self._labels: dict[int, list[torch.Tensor]] = {}
        self._pixel_metrics: dict[int, F1AdaptiveThreshold] = {}
        self._pixel_positives: dict[int, int] = {}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize ``dataset_stats`` to the checkpoint's number of datasets before loading."""
        key = f"{prefix}dataset_stats"
        if key in state_dict:
            self.dataset_stats = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------------------ fitting

    def fit(
        self,
        scores: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor | None],
        pixel_thresholds: Sequence[float | None] | None = None,
        num_datasets: int | None = None,
    ) -> None:
        """Fit per-dataset and pooled statistics from validation scores (entry ``i``: dataset ``i``).

        Entries beyond ``num_datasets`` (images of no known dataset) only enter the pooled fit.

        Example:
            >>> import torch
            >>> post = RankPreservingPostProcessor(normal_std=1.0)
            >>> post.fit([torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0])], [None, None])
            >>> [round(t, 2) for t in post.dataset_stats[:, 0].tolist()], round(float(post.image_threshold), 2)
            ([3.41, 34.14], 24.24)

        """
        pixel_thresholds = list(pixel_thresholds) if pixel_thresholds is not None else [None] * len(scores)
        rows = []
        count = len(scores) if num_datasets is None else num_datasets
        for dataset_scores, dataset_labels, pixel in list(zip(scores, labels, pixel_thresholds, strict=True))[:count]:
            threshold, scale = fit_threshold_and_scale(dataset_scores, dataset_labels, self.normal_std)
            rows.append([threshold, scale, float("nan") if pixel is None else pixel, scale])
        all_scores = torch.cat([s.flatten().float() for s in scores])
        all_labels = torch.cat(
            [
                (lab if lab is not None else torch.zeros_like(s)).flatten().long()
                for s, lab in zip(scores, labels, strict=True)
            ]
        )
        threshold, scale = fit_threshold_and_scale(all_scores, all_labels, self.normal_std)
        known_pixel = [p for p in pixel_thresholds if p is not None]
        dtype = self.dataset_stats.dtype
        self.dataset_stats = torch.tensor(rows, dtype=torch.float64).to(dtype).reshape(-1, len(STAT_COLUMNS))
        self._image_threshold.fill_(threshold)
        self.image_scale.fill_(scale)
        self._pixel_threshold.fill_(sum(known_pixel) / len(known_pixel) if known_pixel else float("nan"))
        self.pixel_scale.fill_(scale)
        if all_scores.numel():
            self.image_min.fill_(float(all_scores.min()))
            self.image_max.fill_(float(all_scores.max()))

    def _indices(self, trainer: Trainer | None, batch: Batch) -> torch.Tensor:
        """Dataset index of every sample (all 0 when not ``per_dataset`` or for single-dataset datamodules)."""
        from anomalib_sir.data.evaluation import dataset_indices

        indices = dataset_indices(getattr(trainer, "datamodule", None), batch)
        return indices if self.per_dataset else torch.zeros_like(indices)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        batch: Any = None,
        batch_idx: int = 0,
        dataloader_idx: int = 0,
    ) -> None:
        """Collect raw validation scores (and pixel statistics) per dataset."""
        del pl_module, batch, batch_idx, dataloader_idx
        if outputs.pred_score is None:
            return
        indices = self._indices(trainer, outputs)
        scores = outputs.pred_score.detach().flatten().cpu()
        labels = outputs.gt_label
        labels = torch.zeros_like(scores, dtype=torch.long) if labels is None else labels.detach().flatten().cpu()
        has_pixels = outputs.gt_mask is not None and outputs.anomaly_map is not None
        for index in sorted(set(indices.tolist())):
            keep = indices == index
            self._scores.setdefault(index, []).append(scores[keep])
            self._labels.setdefault(index, []).append(labels[keep].long())
            if has_pixels:
                masks = outputs.gt_mask.detach().cpu()[keep]
                maps = outputs.anomaly_map.detach().cpu()[keep].reshape(masks.shape)
                self._pixel_positives[index] = self._pixel_positives.get(index, 0) + int((masks > 0).sum())
                metric = self._pixel_metrics.setdefault(index, F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"]))
                metric.update(SimpleNamespace(anomaly_map=maps.flatten(), gt_mask=masks.flatten().int()))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fit the per-dataset and pooled statistics from the collected validation scores."""
        del pl_module
        if not self._scores:
            return
        known = [i for i in self._scores if i >= 0]
        indices = [*range(max(known) + 1), *([-1] if -1 in self._scores else [])] if known else [-1]
        empty = torch.empty(0)
        pixel = [
            float(self._pixel_metrics[i].compute()) if self._pixel_positives.get(i, 0) > 0 else None for i in indices
        ]
        scores = [torch.cat(self._scores[i]) if i in self._scores else empty for i in indices]
        labels = [torch.cat(self._labels[i]) if i in self._labels else empty.long() for i in indices]
        num_datasets = len(known and range(max(known) + 1))
        self.fit(scores, labels, pixel, num_datasets=num_datasets)
        self.fitted_step.fill_(int(getattr(trainer, "global_step", 0)))
        self._reset_accumulators()

    # ------------------------------------------------------------------------------------------ refit

    def _fit_is_stale(self, trainer: Trainer) -> bool:
        unfitted = bool(torch.isnan(self._image_threshold)) or self.dataset_stats.numel() == 0
        return unfitted or int(self.fitted_step) != int(trainer.global_step)

    @torch.no_grad()
    def refit(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Refit on the datamodule's validation data with the current weights (never on test data).

        Returns:
            Whether a refit happened (``False`` without a datamodule or validation data).

        """
        datamodule = getattr(trainer, "datamodule", None)
        try:
            loaders = datamodule.val_dataloader() if datamodule is not None else None
        except (AttributeError, RuntimeError, TypeError) as error:
            logger.warning("Cannot refit normalisation: no validation data (%s)", error)
            return False
        if loaders is None:
            return False
        loaders = list(loaders) if isinstance(loaders, list | tuple) else [loaders]
        pre_processor = getattr(pl_module, "pre_processor", None)
        was_training = pl_module.training
        pl_module.eval()
        self._reset_accumulators()
        for index, loader in enumerate(loaders):
            for batch_idx, batch in enumerate(loader):
                if pl_module.device.type != "cpu":
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, index)
                if pre_processor is not None and hasattr(pre_processor, "on_validation_batch_start"):
                    pre_processor.on_validation_batch_start(trainer, pl_module, batch, batch_idx)
                outputs = pl_module.validation_step(batch, batch_idx)
                self.on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, index)
        self.on_validation_epoch_end(trainer, pl_module)
        pl_module.train(was_training)
        logger.info("Refitted score normalisation on validation data: %s", self.describe())
        return True

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Refit on validation data when the fit is missing or older than the current weights."""
        enabled = self.enable_normalization or self.enable_thresholding
        if self.refit_before_test and enabled and self._fit_is_stale(trainer):
            self.refit(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Refit like :meth:`on_test_start`."""
        self.on_test_start(trainer, pl_module)

    # ------------------------------------------------------------------------------------------ applying

    def _pooled_row(self) -> torch.Tensor:
        return torch.stack([self.image_threshold, self.image_scale, self.pixel_threshold, self.pixel_scale]).to(
            self.dataset_stats
        )

    def sample_stats(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` statistics (see :data:`STAT_COLUMNS`) for samples of the given datasets; unknown: pooled.

        Example:
            >>> import torch
            >>> post = RankPreservingPostProcessor(normal_std=0.0)
            >>> post.fit([torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0])], [None, None])
            >>> post.sample_stats(torch.tensor([1, 0, -1]))[:, 0].tolist()
            [20.0, 2.0, 11.0]

        """
        pooled = self._pooled_row()
        table = torch.cat([self.dataset_stats, pooled[None]]) if self.per_dataset else pooled[None]
        last = len(table) - 1
        indices = indices.to(table.device).long()
        rows = table[torch.where((indices >= 0) & (indices < last), indices, torch.full_like(indices, last))]
        if self.enable_threshold_matching:  # a dataset without pixel threshold uses its own image threshold
            rows[:, 2] = torch.where(torch.isnan(rows[:, 2]), rows[:, 0], rows[:, 2])
        return torch.where(torch.isnan(rows), pooled.expand_as(rows), rows)

    @staticmethod
    def _per_sample(values: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        """Reshape a ``(B,)`` column to broadcast against ``values`` of shape ``(B, ...)``."""
        return column.to(values).reshape(-1, *([1] * (values.ndim - 1)))

    def post_process_batch(self, batch: Batch, indices: torch.Tensor | None = None) -> None:
        """Normalise and threshold a batch in place, each sample with its dataset's statistics."""
        reference = batch.pred_score if batch.pred_score is not None else batch.anomaly_map
        if reference is None:
            return
        if indices is None:
            indices = torch.full((reference.shape[0],), -1, dtype=torch.long)
        stats = self.sample_stats(indices)
        image_t, image_s, pixel_t, pixel_s = stats.unbind(dim=1)
        score, amap = batch.pred_score, batch.anomaly_map
        image_cut, pixel_cut = image_t, pixel_t
        if self.enable_normalization:
            if score is not None:
                score = rank_preserving_normalize(
                    score, self._per_sample(score, image_t), self._per_sample(score, image_s)
                )
            if amap is not None:
                amap = rank_preserving_normalize(amap, self._per_sample(amap, pixel_t), self._per_sample(amap, pixel_s))
            image_cut = torch.where(torch.isnan(image_t), image_t, self.normalized_image_threshold.to(image_t))
            pixel_cut = torch.where(torch.isnan(pixel_t), pixel_t, self.normalized_pixel_threshold.to(pixel_t))
            batch.pred_score, batch.anomaly_map = score, amap
        if self.enable_thresholding:
            if batch.pred_label is None and score is not None and not torch.isnan(image_cut).any():
                batch.pred_label = score > self._per_sample(score, image_cut)
            if batch.pred_mask is None and amap is not None and not torch.isnan(pixel_cut).any():
                batch.pred_mask = amap > self._per_sample(amap, pixel_cut)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        batch: Any = None,
        batch_idx: int = 0,
        dataloader_idx: int = 0,
    ) -> None:
        """Post-process test predictions with the statistics of each image's dataset."""
        del pl_module, batch, batch_idx, dataloader_idx
        self.post_process_batch(outputs, self._indices(trainer, outputs))

    #: Predictions are post-processed like test batches (images of no known dataset: pooled statistics).
    on_predict_batch_end = on_test_batch_end

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """Post-process raw predictions with the pooled statistics (the exported graph uses this).

        Raises:
            ValueError: neither ``pred_score`` nor ``anomaly_map`` is given.

        """
        if predictions.pred_score is None and predictions.anomaly_map is None:
            msg = "At least one of pred_score or anomaly_map must be provided."
            raise ValueError(msg)
        pred_score = (
            predictions.pred_score
            if predictions.pred_score is not None
            else torch.amax(predictions.anomaly_map, dim=(-2, -1))
        )
        anomaly_map = predictions.anomaly_map
        image_t, image_s, pixel_t, pixel_s = (
            self.image_threshold,
            self.image_scale,
            self.pixel_threshold,
            self.pixel_scale,
        )
        image_cut, pixel_cut = image_t, pixel_t
        if self.enable_normalization:
            pred_score = rank_preserving_normalize(pred_score, image_t, image_s)
            anomaly_map = rank_preserving_normalize(anomaly_map, pixel_t, pixel_s) if anomaly_map is not None else None
            image_cut, pixel_cut = self.normalized_image_threshold, self.normalized_pixel_threshold
        pred_label = pred_mask = None
        if self.enable_thresholding:
            pred_label = self._apply_threshold(pred_score, image_cut.to(pred_score))
            pred_mask = self._apply_threshold(anomaly_map, pixel_cut.to(pred_score))
        return InferenceBatch(
            pred_label=pred_label, pred_score=pred_score, pred_mask=pred_mask, anomaly_map=anomaly_map
        )

    def describe(self) -> str:
        """One line with the fitted statistics (raw score units).

        Example:
            >>> RankPreservingPostProcessor().describe()
            'not fitted'

        """
        if self.dataset_stats.numel() == 0:
            return "not fitted"
        parts = [
            f"dataset {i}: threshold={row[0]:.4g} scale={row[1]:.4g}"
            for i, row in enumerate(self.dataset_stats.tolist())
        ]
        pooled = f"pooled: threshold={float(self.image_threshold):.4g} scale={float(self.image_scale):.4g}"
        return "; ".join([*parts, pooled])
