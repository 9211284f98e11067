"""One benchmark cell: train with anomalib's Engine, score with the product's evaluator, measure cost.

:func:`run_cell` is what an executor runs in a fresh process per cell (see
:mod:`anomalib_sir.benchmark.executors`). It:

1. builds the cell's datamodule from the product's datamodules (:func:`~anomalib_sir.benchmark.data.cell_datamodule`)
   and the model with the run's shared pre-processor (resize + teacher mean/std), the product's
   :class:`~anomalib_sir.post_processing.RankPreservingPostProcessor` and
   :class:`~anomalib_sir.data.evaluation.PerDatasetEvaluator` – the same components ``anomalib test`` uses
   with ``Sir`` – for every model (SIR, PatchCore, RD);
2. trains it with :class:`anomalib.engine.Engine` on the cell's k-shot normals (no validation while training:
   nothing is selected on held-out data);
3. validates once (the post-processor fits each dataset's threshold and normalisation; the evaluator records
   validation AUROC per dataset), then tests: one row per test dataset from the evaluator's table;
4. optionally measures cost: eager torch and exported OpenVINO latency (ms/image after warm-up, per batch
   size), model size on disk, and the process's peak resident memory.

The result is a JSON-serialisable dict: ``{"cell": ..., "rows": [one per test dataset], "cost": ...}``.
"""

from __future__ import annotations

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
from typing import Any

import lightning
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.callbacks import ModelCheckpoint
from anomalib.data import AnomalibDataModule
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

from anomalib_sir import Sir
from anomalib_sir.allocator import limit_heap_fragmentation
from anomalib_sir.benchmark.config import BenchmarkConfig, ModelSpec
from anomalib_sir.benchmark.data import cell_datamodule, import_object
from anomalib_sir.benchmark.grid import Cell
from anomalib_sir.data.evaluation import PerDatasetEvaluator
from anomalib_sir.deploy.runtime import openvino_compile_config
from anomalib_sir.post_processing import RankPreservingPostProcessor

logger = logging.getLogger(__name__)

#: Columns of a result row taken from the evaluator's test table (when the metric could be computed).
TEST_METRICS = ("image_AUROC", "image_AUPR", "image_F1Score", "pixel_AUROC", "pixel_AUPR")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_model(spec: ModelSpec, image_size: int, backbone: str, shot: int | None = None) -> AnomalibModule:
    """Instantiate a grid model with the shared pre-processor and the product's post-processor and evaluator.

    Example:
        >>> model = build_model(ModelSpec("anomalib_sir.Sir", {"pre_trained": False, "width": 16}), 32,
        ...                     "tf_efficientnet_lite0")
        >>> type(model.post_processor).__name__, type(model.evaluator).__name__, model.input_size
        ('RankPreservingPostProcessor', 'PerDatasetEvaluator', torch.Size([32, 32]))

    """
    cls = import_object(spec.class_path)
    kwargs = spec.init_args_for(shot)
    kwargs.update(
        pre_processor=Sir.configure_pre_processor((image_size, image_size), backbone),
        post_processor=RankPreservingPostProcessor(),
        evaluator=PerDatasetEvaluator(print_table=False),
        visualizer=False,
    )
    return cls(**kwargs)


def subset_sizes(datamodule: AnomalibDataModule) -> dict[str, tuple[int, int]]:
    """``{dataset: (n_val, n_test)}`` of a set-up cell datamodule (universal: per member)."""
    names = getattr(datamodule, "dataset_names", None)
    if names:
        return {
            name: (len(val), len(test))
            for name, val, test in zip(names, datamodule.val_datasets, datamodule.test_datasets, strict=True)
        }
    return {datamodule.name: (len(datamodule.val_data), len(datamodule.test_data))}


def result_rows(model: AnomalibModule, datamodule: AnomalibDataModule, test_time_s: float) -> list[dict[str, Any]]:
    """One row per test dataset: the evaluator's test metrics, validation AUROC, threshold and sizes."""
    evaluator, post = model.evaluator, model.post_processor
    table, val_table = evaluator.table, evaluator.val_table
    sizes = subset_sizes(datamodule)
    total_test = max(1, sum(n_test for _, n_test in sizes.values()))
    rows = []
    for index, (dataset, (n_val, n_test)) in enumerate(sizes.items()):
        row: dict[str, Any] = {"dataset": dataset, "n_val": n_val, "n_test": n_test}
        for metric in TEST_METRICS:
            value = table.loc[dataset, metric] if table is not None and metric in table.columns else float("nan")
            row[metric] = float(value)
        val_auroc = val_table.loc[dataset, "image_AUROC"] if val_table is not None else float("nan")
        row["val_image_AUROC"] = float(val_auroc)
        stats = post.dataset_stats
        row["image_threshold"] = float(stats[index, 0]) if index < len(stats) else float("nan")
        row["test_ms_per_image"] = 1000.0 * test_time_s / total_test
        rows.append(row)
    return rows


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


def train_and_test(
    config: BenchmarkConfig, cell: Cell, work_dir: Path
) -> tuple[Engine, AnomalibModule, AnomalibDataModule, list[dict[str, Any]], dict[str, Any]]:
    """Fit the cell's model on its k-shot normals, validate once, test; return rows and timing statistics."""
    spec = config.models[cell.model]
    datamodule = cell_datamodule(config, cell.train_datasets, cell.shot, cell.seed)
    if spec.train_batch_size:
        datamodule.train_batch_size = int(spec.train_batch_size)
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
    engine.fit(model=model, datamodule=datamodule)
    stats = {
        "train_time_s": time.perf_counter() - start,
        "train_cpu_s": time.process_time() - cpu_start,
        "peak_rss_fit_mb": peak_rss_mb(),
    }
    engine.trainer.limit_val_batches = 1.0  # one validation pass: thresholds, normalisation, validation AUROC
    engine.validate(model=model, datamodule=datamodule, verbose=False)
    start = time.perf_counter()
    engine.test(model=model, datamodule=datamodule, verbose=False)
    rows = result_rows(model, datamodule, time.perf_counter() - start)
    for row in rows:
        row["n_train"] = len(datamodule.train_data)
    return engine, model, datamodule, rows, stats


def latency_images(datamodule: AnomalibDataModule, count: int, image_size: int) -> torch.Tensor:
    """Return a few raw (un-normalised) test images at the model's size, for the latency probes."""
    count = min(count, len(datamodule.test_data))
    images = [datamodule.test_data[i].image for i in range(count)]
    return torch.stack([F.interpolate(image[None], size=(image_size, image_size))[0] for image in images])


def release_inference_buffers(model: torch.nn.Module) -> int:
    """Replace buffers created under ``torch.inference_mode`` (fitted in a validation hook) by normal copies.

    Export traces the model with autograd on, which refuses inference tensors. Returns how many were replaced.

    Example:
        >>> module = torch.nn.BatchNorm1d(2)
        >>> with torch.inference_mode():
        ...     module.running_mean = torch.ones(2)
        >>> release_inference_buffers(module), module.running_mean.is_inference()
        (1, False)

    """
    replaced = 0
    with torch.inference_mode(False):
        for module in model.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None and buffer.is_inference():
                    setattr(module, name, buffer.clone())
                    replaced += 1
    return replaced


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
        release_inference_buffers(model)
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
    engine, model, datamodule, rows, stats = train_and_test(config, cell, work_dir)
    cost: dict[str, Any] = dict(stats)
    if cell.measure_cost:
        images = latency_images(datamodule, max(config.cost.batch_sizes), config.image_size)
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
