"""One-line summary of an ``anomalib predict`` run: how many images, how many anomalous, where they went.

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> summary = PredictionSummary()
    >>> summary.on_predict_start(None, None)
    >>> batch = SimpleNamespace(pred_score=torch.tensor([0.2, 0.9]), pred_label=torch.tensor([False, True]))
    >>> summary.on_predict_batch_end(None, None, batch, None, 0)
    >>> summary.line("results/images")
    '2 images predicted, 1 anomalous (scores 0.200-0.900); images in results/images'

"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)


class PredictionSummary(Callback):
    """Collect post-processed scores during ``predict`` and log one line at the end (registered after them)."""

    def __init__(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_predict_start(self, trainer: Trainer | None, pl_module: LightningModule | None) -> None:
        """Forget earlier runs."""
        del trainer, pl_module
        self._scores, self._labels = [], []

    def on_predict_batch_end(
        self, trainer: Trainer | None, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep the batch's scores and labels (anomalib's post-processor callback has run before this one)."""
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        if getattr(outputs, "pred_score", None) is not None:
            self._scores.append(outputs.pred_score.detach().flatten().cpu())
        if getattr(outputs, "pred_label", None) is not None:
            self._labels.append(outputs.pred_label.detach().flatten().cpu())

    def line(self, output: str | Path | None) -> str:
        """Return the summary line (``output``: where the visualizer wrote the images, ``None``: nowhere)."""
        scores = torch.cat(self._scores)
        anomalous = f", {int(torch.cat(self._labels).sum())} anomalous" if self._labels else ""
        where = f"images in {output}" if output else "no images written (no visualizer)"
        return f"{len(scores)} images predicted{anomalous} (scores {scores.min():.3f}-{scores.max():.3f}); {where}"

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the summary line."""
        if not self._scores:
            return
        visualizer = getattr(pl_module, "visualizer", None)
        output = (
            (getattr(visualizer, "output_dir", None) or Path(trainer.default_root_dir) / "images")
            if visualizer
            else None
        )
        logger.info(self.line(output))
