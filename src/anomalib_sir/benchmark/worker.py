"""One benchmark cell: train with anomalib's Engine, score with anomalib's metrics, measure cost.

:func:`run_cell` is what the runner executes in a fresh child process per cell (forked from a server
that has already imported torch/anomalib/OpenVINO, with ``MALLOC_MMAP_THRESHOLD_`` set). It:

1. builds the model with the run's shared pre-processor (resize + teacher mean/std), **no
   post-processor** (raw, rank-preserving scores) and no evaluator/visualizer;
2. trains it with :class:`anomalib.engine.Engine` on the cell's k-shot normals (validation is off during
   training: nothing is selected on held-out data);
3. for every test dataset: predicts its validation images and fits anomalib's
   :class:`~anomalib.metrics.F1AdaptiveThreshold` on the raw scores, then predicts its test images and
   computes :class:`~anomalib.metrics.AUROC`, :class:`~anomalib.metrics.AUPR`,
   :class:`~anomalib.metrics.F1Max` and :class:`~anomalib.metrics.F1Score` at that threshold (labels
   ``score > threshold``, as anomalib's post-processor does), plus pixel AUROC when masks exist;
4. optionally measures cost: eager torch and exported OpenVINO latency (ms/image after warm-up, per batch
   size), model size on disk, and the process's peak resident memory.

The result is a JSON-serialisable dict: ``{"cell": ..., "rows": [one per test dataset], "cost": ...}``.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import torch
from anomalib.callbacks import ModelCheckpoint
from anomalib.data import AnomalibDataModule
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.metrics import AUPR, AUROC, F1AdaptiveThreshold, F1Max, F1Score
from anomalib.models.components import AnomalibModule

from anomalib_sir import Sir
from anomalib_sir.allocator import limit_heap_fragmentation
from anomalib_sir.benchmark.config import BenchmarkConfig, ModelSpec
from anomalib_sir.benchmark.data import DataFactory, SplitDataFactory, source_from_config
from anomalib_sir.benchmark.grid import Cell
from anomalib_sir.deploy.runtime import openvino_compile_config

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def import_object(path: str) -> Any:
    """Import ``"package.module.Name"`` or ``"package.module:Name"``.

    Example:
        >>> import_object("anomalib_sir.Sir").__name__
        'Sir'

    """
    module_name, _, attribute = path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def build_data_factory(config: BenchmarkConfig) -> DataFactory:
    """Return the configured data factory (built-in :class:`SplitDataFactory` unless ``data_factory`` is set)."""
    if config.data_factory:
        return import_object(config.data_factory)(
            datasets=config.datasets,
            train_batch_size=config.train_batch_size,
            eval_batch_size=config.eval_batch_size,
            **dict(config.data_factory_args),
        )
    data_root = Path(config.data_root).expanduser() if config.data_root else None
    return SplitDataFactory(
        sources={name: source_from_config(spec, data_root) for name, spec in config.datasets.items()},
        split_seed=config.split_seed,
        train_fraction=config.train_fraction,
        val_fraction=config.val_fraction,
        cache_size=config.image_size if config.cache_dir else None,
        cache_dir=Path(config.cache_dir).expanduser() / f"{config.image_size}px" if config.cache_dir else None,
        train_batch_size=config.train_batch_size,
        eval_batch_size=config.eval_batch_size,
    )


def build_model(spec: ModelSpec, image_size: int, backbone: str, shot: int | None = None) -> AnomalibModule:
    """Instantiate a grid model with the shared pre-processor and raw scores (no post-processing).

    Example:
        >>> model = build_model(ModelSpec("anomalib_sir.Sir", {"pre_trained": False, "width": 16}), 32,
        ...                     "tf_efficientnet_lite0")
        >>> model.post_processor is None, model.input_size
        (True, torch.Size([32, 32]))

    """
    cls = import_object(spec.class_path)
    kwargs = spec.init_args_for(shot)
    kwargs.update(
        pre_processor=Sir.configure_pre_processor((image_size, image_size), backbone),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    return cls(**kwargs)


def _prepare(datamodule: AnomalibDataModule, engine: Engine) -> AnomalibDataModule:
    """Set up an evaluation datamodule with the trained model's transforms (anomalib appends its resize)."""
    datamodule.trainer = engine.trainer
    datamodule.setup()
    return datamodule


def _predict(engine: Engine, model: AnomalibModule, loader: torch.utils.data.DataLoader) -> list[Any]:
    """Raw predictions of ``loader``, reduced to the fields the metrics read (maps only with masks)."""
    batches = engine.predict(model=model, dataloaders=loader, return_predictions=True) or []
    out = []
    for batch in batches:
        has_mask = getattr(batch, "gt_mask", None) is not None
        out.append(
            SimpleNamespace(
                pred_score=batch.pred_score.detach().flatten().float(),
                gt_label=batch.gt_label.detach().flatten(),
                anomaly_map=batch.anomaly_map.detach() if has_mask and batch.anomaly_map is not None else None,
                gt_mask=batch.gt_mask.detach() if has_mask else None,
                pred_label=None,
            )
        )
    return out


def unit_interval(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Affine, order-preserving map of ``values`` from ``[low, high]`` into ``[0, 1]`` (float64 arithmetic).

    anomalib's ``AUROC`` (torchmetrics ``BinaryROC``) reads scores outside ``[0, 1]`` as logits and applies a
    sigmoid, which saturates raw distances such as PatchCore's (every score becomes 1.0 and AUROC 0.5).
    Rescaling with the range of the scores being evaluated changes no ranking, so AUROC, AUPR and F1Max are
    exactly those of the raw scores.

    Example:
        >>> unit_interval(torch.tensor([30.0, 31.0, 35.0]), 30.0, 35.0).tolist()
        [0.0, 0.20000000298023224, 1.0]

    """
    span = high - low
    if span <= 0:
        return torch.zeros_like(values, dtype=torch.float32)
    return ((values.double() - low) / span).clamp(0, 1).float()


def validation_auroc(val_batches: Sequence[Any]) -> float:
    """Image AUROC on the validation split (for choosing settings without the test split; NaN if one class).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace as Batch
        >>> validation_auroc([Batch(gt_label=torch.tensor([0, 1, 1]), pred_score=torch.tensor([1.0, 3.0, 2.0]))])
        1.0
        >>> validation_auroc([Batch(gt_label=torch.tensor([0, 0]), pred_score=torch.tensor([1.0, 3.0]))])
        nan

    """
    if not val_batches:
        return float("nan")
    scores = torch.cat([b.pred_score.flatten() for b in val_batches])
    labels = torch.cat([b.gt_label.flatten() for b in val_batches]).long()
    if labels.min() == labels.max():
        return float("nan")
    metric = AUROC(fields=["pred_score", "gt_label"])
    metric.update(
        SimpleNamespace(pred_score=unit_interval(scores, float(scores.min()), float(scores.max())), gt_label=labels)
    )
    return float(metric.compute())


def evaluate(val_batches: Sequence[Any], test_batches: Sequence[Any]) -> dict[str, float]:
    """Image (and pixel) metrics of raw test scores; F1 at the adaptive threshold fitted on validation.

    The threshold is anomalib's :class:`~anomalib.metrics.F1AdaptiveThreshold` on the *validation* scores;
    test labels are ``score > threshold`` (as anomalib's post-processor); AUROC/AUPR/F1Max are computed on
    the test scores after :func:`unit_interval` (rank-preserving).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace as Batch
        >>> val = [Batch(gt_label=torch.tensor([0, 0, 1, 1]), pred_score=torch.tensor([31.0, 32.0, 38.0, 39.0]))]
        >>> test = [Batch(gt_label=torch.tensor([0, 1, 0, 1]), pred_score=torch.tensor([35.0, 37.0, 31.5, 38.5]))]
        >>> metrics = evaluate(val, test)
        >>> metrics["image_AUROC"], metrics["image_threshold"], round(metrics["image_F1Score"], 3)
        (1.0, 38.0, 0.667)

    """
    threshold_metric = F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False)
    for batch in val_batches:
        threshold_metric.update(SimpleNamespace(pred_score=batch.pred_score.flatten(), gt_label=batch.gt_label))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threshold = threshold_metric.compute() if val_batches else torch.tensor(float("nan"))
    scores = torch.cat([b.pred_score.flatten() for b in test_batches])
    labels = torch.cat([b.gt_label.flatten() for b in test_batches]).long()
    image_batch = SimpleNamespace(
        pred_score=unit_interval(scores, float(scores.min()), float(scores.max())),
        pred_label=(scores > threshold).long(),
        gt_label=labels,
    )
    out: dict[str, float] = {}
    for name, metric in {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "image_AUPR": AUPR(fields=["pred_score", "gt_label"]),
        "image_F1Max": F1Max(fields=["pred_score", "gt_label"]),
        "image_F1Score": F1Score(fields=["pred_label", "gt_label"]),
    }.items():
        metric.update(image_batch)
        out[name] = float(metric.compute())
    out["image_threshold"] = float(threshold)
    out["val_image_AUROC"] = validation_auroc(val_batches)
    masked = [b for b in test_batches if getattr(b, "gt_mask", None) is not None and b.anomaly_map is not None]
    out["pixel_AUROC"] = float("nan")
    if masked:
        low = min(float(b.anomaly_map.min()) for b in masked)
        high = max(float(b.anomaly_map.max()) for b in masked)
        pixel_auroc = AUROC(fields=["anomaly_map", "gt_mask"])
        for b in masked:
            pixel_auroc.update(SimpleNamespace(anomaly_map=unit_interval(b.anomaly_map, low, high), gt_mask=b.gt_mask))
        out["pixel_AUROC"] = float(pixel_auroc.compute())
    return out


def _time_ms_per_image(call: Callable[[], Any], batch: int, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch


def _batch_of(images: torch.Tensor, size: int) -> torch.Tensor:
    reps = -(-size // len(images))
    return images.repeat(reps, 1, 1, 1)[:size].contiguous()


def measure_torch_latency(
    model: AnomalibModule, images: torch.Tensor, batch_sizes: Sequence[int], warmup: int, repeats: int
) -> dict[str, float]:
    """Eager ms/image of the full module (pre-processing + model), per batch size, after warm-up."""
    model.eval()
    out = {}
    with torch.inference_mode():
        for size in batch_sizes:
            x = _batch_of(images, size)
            out[f"torch_ms_b{size}"] = _time_ms_per_image(lambda x=x: model(x), size, warmup, repeats)
    return out


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure_openvino(
    engine: Engine,
    model: AnomalibModule,
    images: torch.Tensor,
    export_root: Path,
    image_size: int,
    batch_sizes: Sequence[int],
    warmup: int,
    repeats: int,
    threads: int,
) -> dict[str, Any]:
    """Export with anomalib to OpenVINO IR, then time it on the CPU per batch size (ms/image).

    When anomalib's dynamic-batch export fails (PatchCore: torch.export cannot prove the batch dimension
    against the memory-bank size) the model is exported with a static batch. A graph with a fixed batch is
    reshaped to each batch size; where OpenVINO cannot do that, that batch size is left empty (NaN) and the
    ``openvino_note`` column says why.
    """
    import openvino as ov

    out: dict[str, Any] = {}
    notes = []
    start = time.perf_counter()
    export = partial(
        engine.export,
        model=model,
        export_type=ExportType.OPENVINO,
        export_root=export_root,
        input_size=(image_size, image_size),
    )
    try:
        xml = Path(export())
    except Exception as exc:
        # e.g. PatchCore: torch.export cannot prove a dynamic batch against the memory-bank size.
        notes.append(f"dynamic-batch export failed ({type(exc).__name__}); exported with a static batch")
        xml = Path(export(onnx_kwargs={"dynamic_shapes": None}))
    out["export_time_s"] = time.perf_counter() - start
    out["model_size_openvino_mb"] = (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
    ov_model = core.read_model(xml)
    input_shape = ov_model.input(0).get_partial_shape()
    fixed_batch = None if input_shape[0].is_dynamic else int(input_shape[0].get_length())
    model.eval()
    for size in batch_sizes:
        out[f"openvino_ms_b{size}"] = float("nan")
        candidate = ov_model
        if fixed_batch is not None and fixed_batch != size:
            candidate = core.read_model(xml)
            try:
                candidate.reshape({candidate.input(0).get_any_name(): [size, 3, image_size, image_size]})
            except Exception as exc:
                notes.append(f"b{size}: graph has a fixed batch {fixed_batch} and cannot be reshaped ({exc})"[:200])
                continue
        x = _batch_of(images, size).numpy()
        try:
            compiled = core.compile_model(candidate, "CPU", openvino_compile_config())
            result = compiled(x)
        except Exception as exc:
            notes.append(f"b{size}: OpenVINO inference failed ({type(exc).__name__})")
            continue
        out[f"openvino_ms_b{size}"] = _time_ms_per_image(lambda c=compiled, x=x: c(x), size, warmup, repeats)
        if "openvino_max_abs_diff" not in out:
            with torch.inference_mode():
                reference = model(torch.from_numpy(x)).pred_score.flatten().numpy()
            scores = next(v for k, v in result.items() if "pred_score" in k.get_names()).reshape(-1)
            out["openvino_max_abs_diff"] = float(abs(scores - reference).max())
    out["openvino_input_batch"] = "dynamic" if fixed_batch is None else str(fixed_batch)
    out["openvino_note"] = "; ".join(notes)
    return out


def _set_threads(threads: int) -> None:
    torch.set_num_threads(int(threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)


def train(
    config: BenchmarkConfig, cell: Cell, factory: DataFactory, work_dir: Path
) -> tuple[Engine, AnomalibModule, dict[str, Any]]:
    """Build the cell's model and fit it with anomalib's Engine on the cell's k-shot normals.

    Validation is off during training (``limit_val_batches=0``): nothing is selected on held-out images.
    Returns the engine, the trained model and ``{"train_time_s", "train_cpu_s", "peak_rss_fit_mb", "n_train"}``.
    """
    spec = config.models[cell.model]
    train_dm = factory(list(cell.train_datasets), cell.shot, cell.seed)
    if spec.train_batch_size:
        train_dm.train_batch_size = int(spec.train_batch_size)
    model = build_model(spec, config.image_size, config.backbone, cell.shot)
    engine = Engine(
        default_root_dir=work_dir / "engine",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=work_dir / "engine" / "ckpt", save_top_k=0, save_last=False)],
        **dict(spec.trainer),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    engine.fit(model=model, datamodule=train_dm)
    stats = {
        "train_time_s": time.perf_counter() - start,
        "train_cpu_s": time.process_time() - cpu_start,
        "peak_rss_fit_mb": peak_rss_mb(),
        "n_train": len(train_dm.train_data),
    }
    return engine, model, stats


def evaluate_datasets(
    config: BenchmarkConfig, cell: Cell, factory: DataFactory, engine: Engine, model: AnomalibModule
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Score every test dataset of the cell (threshold from its validation split, metrics on its test split).

    Returns one row per dataset and a few raw test images at the model's size (for the latency probes).
    """
    rows = []
    images: torch.Tensor | None = None
    for dataset in cell.test_datasets:
        eval_dm = _prepare(factory([dataset], cell.shot, cell.seed), engine)
        val_batches = _predict(engine, model, eval_dm.val_dataloader())
        start = time.perf_counter()
        test_batches = _predict(engine, model, eval_dm.test_dataloader())
        test_time = time.perf_counter() - start
        if images is None:  # raw (un-normalised) test images at the model's size, for latency
            count = min(max(config.cost.batch_sizes), len(eval_dm.test_data))
            images = torch.stack([eval_dm.test_data[i].image for i in range(count)])
        n_test = sum(len(b.pred_score.flatten()) for b in test_batches)
        rows.append(
            {
                "dataset": dataset,
                "n_val": len(eval_dm.val_data),
                "n_test": n_test,
                "test_ms_per_image": 1000.0 * test_time / max(n_test, 1),
                **evaluate(val_batches, test_batches),
            }
        )
    assert images is not None  # a cell has at least one test dataset
    return rows, images


def measure_cost(
    config: BenchmarkConfig, cell: Cell, engine: Engine, model: AnomalibModule, images: torch.Tensor, work_dir: Path
) -> dict[str, Any]:
    """Model size on disk, eager torch latency and (if enabled) exported OpenVINO latency of the trained model."""
    cost: dict[str, Any] = {}
    spec, cost_spec = config.models[cell.model], config.cost
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        state_path = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), state_path)
        cost["model_size_torch_mb"] = state_path.stat().st_size / 2**20
    cost.update(measure_torch_latency(model, images, cost_spec.batch_sizes, cost_spec.warmup, cost_spec.repeats))
    if cost_spec.openvino and spec.openvino:
        try:
            cost.update(
                measure_openvino(
                    engine,
                    model,
                    images,
                    work_dir / "export",
                    config.image_size,
                    cost_spec.batch_sizes,
                    cost_spec.warmup,
                    cost_spec.repeats,
                    config.threads,
                )
            )
        except Exception as exc:  # record it and keep the accuracy results
            logger.exception("OpenVINO export/timing failed")
            cost["openvino_note"] = f"export/timing failed: {type(exc).__name__}: {exc}"[:500]
    return cost


def run_cell(config: BenchmarkConfig, cell: Cell, work_dir: Path) -> dict[str, Any]:
    """Train and evaluate one cell; return ``{"cell", "rows", "cost"}`` (see module docstring)."""
    limit_heap_fragmentation()
    _set_threads(config.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("anomalib").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    load_start, started, cell_start = os.getloadavg()[0], time.time(), time.perf_counter()
    lightning.seed_everything(cell.seed, workers=True, verbose=False)
    factory = build_data_factory(config)
    engine, model, stats = train(config, cell, factory, work_dir)
    rows, images = evaluate_datasets(config, cell, factory, engine, model)
    n_train = stats.pop("n_train")
    for row in rows:
        row["n_train"] = n_train
    cost: dict[str, Any] = dict(stats)
    if cell.measure_cost:
        cost.update(measure_cost(config, cell, engine, model, images, work_dir))
    cost.update(
        peak_rss_mb=peak_rss_mb(),
        cell_wall_s=time.perf_counter() - cell_start,
        cell_cpu_s=time.process_time(),  # CPU seconds of this (fresh) cell process, all threads
        started_unix=started,
        finished_unix=time.time(),
        load_avg_start=load_start,
        load_avg_end=os.getloadavg()[0],
    )
    return {"cell": cell.to_dict(), "rows": rows, "cost": cost}
