"""Per-dataset test metrics: one row per dataset (member of a universal datamodule) and their mean.

:class:`PerDatasetEvaluator` is anomalib's :class:`~anomalib.metrics.Evaluator` whose test metrics (anomalib's
own ``AUROC``, ``AUPR``, ``F1Score`` classes) are kept separately for every dataset; a sample's dataset comes
from the datamodule's ``dataset_index(image_paths)`` (:class:`~anomalib_sir.data.UniversalDataModule`), and
is 0 for any other datamodule. At the end of testing it

* logs ``<metric>/<dataset>`` for every dataset and ``<metric>`` for the mean over datasets (so with a single
  dataset the usual ``image_AUROC`` is that dataset's value);
* prints the table and writes it to ``<run dir>/metrics_per_dataset.csv`` and ``.md`` – never over existing
  files: if they exist (``anomalib test`` in the training run's folder), ``metrics_per_dataset-2.csv`` ...
  is used, and the path is logged (:attr:`PerDatasetEvaluator.table_path`);
* keeps it as :attr:`PerDatasetEvaluator.table` (a DataFrame).

During validation it also keeps :attr:`PerDatasetEvaluator.val_table`: the image AUROC of each dataset's
validation images (raw scores; NaN for a normal-only validation set) and their mean, logged as
``val_image_AUROC`` – what settings are chosen by when validation is a labelled hold-out.

Dataset names come from the datamodule (``dataset_names`` of
:class:`~anomalib_sir.data.UniversalDataModule`, else its ``name``).

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> evaluator = PerDatasetEvaluator()
    >>> for idx, scores in enumerate(([0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.2, 0.8])):
    ...     batch = SimpleNamespace(pred_score=torch.tensor(scores), gt_label=torch.tensor([0, 1, 0, 1]),
    ...                             pred_label=None, anomaly_map=None, gt_mask=None, pred_mask=None)
    ...     evaluator.update(batch, idx)
    >>> table = evaluator.compute_table(["a", "b"])
    >>> table["image_AUROC"].round(3).tolist()
    [1.0, 0.25, 0.625]
    >>> table.index.tolist()
    ['a', 'b', 'mean']

"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch
from anomalib.metrics import AUPR, AUROC, AnomalibMetric, Evaluator, F1Score
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchmetrics.functional.classification import binary_auroc

logger = logging.getLogger(__name__)

TABLE_NAME = "metrics_per_dataset"

#: Batch fields that metrics read; they are split per dataset.
METRIC_FIELDS = ("pred_score", "pred_label", "anomaly_map", "pred_mask", "gt_label", "gt_mask")


def _batch_size(batch: Any) -> int:
    for field in ("pred_score", "image", "anomaly_map", "gt_label"):
        value = getattr(batch, field, None)
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return len(getattr(batch, "image_path", None) or [])


def dataset_indices(datamodule: object, batch: Any) -> torch.Tensor:
    """Dataset index of every sample of a batch (``-1``: unknown).

    Uses the datamodule's ``dataset_index(image_paths)`` (see :class:`~anomalib_sir.data.UniversalDataModule`);
    for any other datamodule every sample belongs to dataset 0.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> dataset_indices(None, SimpleNamespace(pred_score=torch.zeros(3))).tolist()
        [0, 0, 0]

    """
    lookup = getattr(datamodule, "dataset_index", None)
    paths = getattr(batch, "image_path", None)
    if lookup is None or paths is None:
        return torch.zeros(_batch_size(batch), dtype=torch.long)
    return lookup(list(paths))


def split_batch(batch: Any, indices: torch.Tensor) -> dict[int, SimpleNamespace]:
    """Split the metric fields of a batch by dataset index.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> parts = split_batch(SimpleNamespace(pred_score=torch.tensor([1.0, 2.0, 3.0])), torch.tensor([1, 0, 1]))
        >>> {k: v.pred_score.tolist() for k, v in parts.items()}
        {0: [2.0], 1: [1.0, 3.0]}

    """
    parts = {}
    for index in sorted(set(indices.tolist())):
        keep = indices == index
        fields = {}
        for field in METRIC_FIELDS:
            value = getattr(batch, field, None)
            fields[field] = value[keep.to(value.device)] if isinstance(value, torch.Tensor) and value.ndim else value
        parts[int(index)] = SimpleNamespace(**fields)
    return parts


def rank_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image AUROC of raw scores of any range (NaN unless both classes are present).

    The scores are mapped affinely into ``[0, 1]`` first: torchmetrics reads scores outside ``[0, 1]`` as logits
    and would saturate raw distances such as PatchCore's. The map changes no ranking.

    Example:
        >>> import torch
        >>> rank_auroc(torch.tensor([30.0, 35.0, 31.0]), torch.tensor([0, 1, 1]))
        1.0
        >>> rank_auroc(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]))
        nan

    """
    scores, labels = scores.detach().double().flatten(), labels.detach().flatten().long()
    if labels.numel() == 0 or labels.min() == labels.max():
        return float("nan")
    span = float(scores.max() - scores.min())
    unit = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
    return float(binary_auroc(unit.float(), labels))


def default_test_metrics() -> list[AnomalibMetric]:
    """Image AUROC/AUPR/F1 and pixel AUROC/AUPR (pixel metrics and F1 skip batches without their fields).

    Example:
        >>> [metric.name for metric in default_test_metrics()]
        ['image_AUROC', 'image_AUPR', 'image_F1Score', 'pixel_AUROC', 'pixel_AUPR']

    """
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_", strict=False),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


def format_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """Render a metric table as a markdown table (no optional dependencies).

    Example:
        >>> print(format_markdown(pd.DataFrame({"image_AUROC": [0.5]}, index=pd.Index(["a"], name="dataset"))))
        | dataset | image_AUROC |
        |---|---|
        | a | 0.5000 |

    """
    header = [table.index.name or "dataset", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = ["" if pd.isna(v) else f"{v:.{digits}f}" for v in row.tolist()]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def write_table_files(table: pd.DataFrame, markdown: str, directory: str | Path, stem: str = TABLE_NAME) -> Path:
    """Write ``<stem>.csv`` and ``<stem>.md`` in ``directory`` without overwriting anything; return the CSV.

    When either file exists (e.g. ``anomalib test`` in the training run's folder), the first free pair
    ``<stem>-2``, ``<stem>-3``, ... is used; files are created exclusively.

    Example:
        >>> import tempfile
        >>> table = pd.DataFrame({"image_AUROC": [0.5]}, index=pd.Index(["a"], name="dataset"))
        >>> folder = tempfile.mkdtemp()
        >>> [write_table_files(table, "| a |", folder).name for _ in range(2)]
        ['metrics_per_dataset.csv', 'metrics_per_dataset-2.csv']

    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = 1
    while True:
        name = stem if index == 1 else f"{stem}-{index}"
        csv_path, md_path = directory / f"{name}.csv", directory / f"{name}.md"
        if not csv_path.exists() and not md_path.exists():
            try:
                with csv_path.open("x", newline="") as file:
                    table.to_csv(file)
            except FileExistsError:  # created meanwhile by another process
                index += 1
                continue
            with md_path.open("x") as file:
                file.write(markdown + "\n")
            if index > 1:
                logger.info("%s exists; not overwritten", directory / f"{stem}.csv")
            return csv_path
        index += 1


class PerDatasetEvaluator(Evaluator):
    """anomalib ``Evaluator`` computing the test metrics per dataset, plus their mean.

    Args:
        val_metrics: validation metrics (pooled over dataloaders, as in anomalib).
        test_metrics: test metric templates, copied per dataset (default :func:`default_test_metrics`).
        compute_on_cpu: as in anomalib.
        output_dir: folder for the table files; default: the trainer's run folder.
        print_table: print the table to stdout at the end of testing.

    """

    def __init__(
        self,
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
        output_dir: str | Path | None = None,
        print_table: bool = True,
    ) -> None:
        super().__init__(
            val_metrics=val_metrics,
            test_metrics=default_test_metrics() if test_metrics is None else test_metrics,
            compute_on_cpu=compute_on_cpu,
        )
        self.output_dir = output_dir
        self.print_table = print_table
        self._per_dataset: dict[int, list[AnomalibMetric]] = {}
        self._val_scores: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.table: pd.DataFrame | None = None
        self.table_path: Path | None = None
        self.val_table: pd.DataFrame | None = None

    def update(self, batch: Any, dataloader_idx: int = 0) -> None:
        """Update the metrics of dataset ``dataloader_idx`` with a batch."""
        metrics = self._per_dataset.get(dataloader_idx)
        if metrics is None:
            metrics = [copy.deepcopy(metric) for metric in self.test_metrics]
            for metric in metrics:
                metric.reset()
            self._per_dataset[dataloader_idx] = metrics
        for metric in metrics:
            metric.update(batch)

    def compute_table(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Compute every metric per dataset; the last row (``mean``) averages the datasets.

        Metrics that no dataset could compute (e.g. pixel metrics without masks) are left out.
        """
        rows: dict[str, dict[str, float]] = {}
        for index in sorted(self._per_dataset):
            name = names[index] if names is not None and 0 <= index < len(names) else f"dataset_{index}"
            values: dict[str, float] = {}
            for metric in self._per_dataset[index]:
                value = metric.compute() if metric.update_called else None
                values[metric.name] = float("nan") if value is None else float(torch.as_tensor(value).float())
            rows[name] = values
        table = pd.DataFrame.from_dict(rows, orient="index").dropna(axis=1, how="all")
        table.index.name = "dataset"
        if len(table):
            table.loc["mean"] = table.mean(axis=0, skipna=True)
        return table

    def reset_datasets(self) -> None:
        """Forget the per-dataset metric states."""
        self._per_dataset = {}

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update anomalib's validation metrics and keep each dataset's raw scores and labels."""
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if getattr(batch, "pred_score", None) is None or getattr(batch, "gt_label", None) is None:
            return
        indices = dataset_indices(getattr(trainer, "datamodule", None), batch)
        for index, part in split_batch(batch, indices).items():
            pair = (part.pred_score.detach().flatten().cpu(), part.gt_label.detach().flatten().cpu())
            self._val_scores.setdefault(index, []).append(pair)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute :attr:`val_table` (image AUROC per dataset and mean) and log its mean as ``val_image_AUROC``."""
        super().on_validation_epoch_end(trainer, pl_module)
        if not self._val_scores:
            return
        names = self._dataset_names(trainer)
        rows = {}
        for index in sorted(self._val_scores):
            scores, labels = (torch.cat(parts) for parts in zip(*self._val_scores[index], strict=True))
            name = names[index] if 0 <= index < len(names) else f"dataset_{index}"
            rows[name] = {"image_AUROC": rank_auroc(scores, labels), "n_images": len(scores)}
        self._val_scores = {}
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index.name = "dataset"
        table.loc["mean"] = [table["image_AUROC"].mean(skipna=True), table["n_images"].sum()]
        self.val_table = table
        if pd.notna(table.loc["mean", "image_AUROC"]):
            pl_module.log("val_image_AUROC", float(table.loc["mean", "image_AUROC"]), add_dataloader_idx=False)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the metrics of each sample's dataset."""
        del pl_module, outputs, batch_idx, dataloader_idx
        indices = dataset_indices(getattr(trainer, "datamodule", None), batch)
        for index, part in split_batch(batch, indices).items():
            self.update(part, index)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log, print and save the per-dataset table."""
        names = self._dataset_names(trainer)
        table = self.compute_table(names)
        self.reset_datasets()
        self.table = table
        if table.empty:
            return
        for column in table.columns:
            for dataset, value in table[column].items():
                key = column if dataset == "mean" else f"{column}/{dataset}"
                if pd.notna(value):
                    pl_module.log(key, float(value), add_dataloader_idx=False)
        text = format_markdown(table)
        logger.info("Test metrics per dataset:\n%s", text)
        if self.print_table:
            print(f"\nTest metrics per dataset (mean = average over datasets):\n{text}\n")
        directory = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir)
        self.table_path = write_table_files(table, text, directory)
        logger.info("Per-dataset metrics written to %s (and .md)", self.table_path)

    @staticmethod
    def _dataset_names(trainer: Trainer) -> list[str]:
        datamodule = getattr(trainer, "datamodule", None)
        names = getattr(datamodule, "dataset_names", None)
        if names:
            return list(names)
        return [getattr(datamodule, "name", "dataset")] if datamodule is not None else ["dataset"]
