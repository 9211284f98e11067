"""Benchmark report: ``results.csv`` (every run), ``summary.md`` (mean ± std table) and PNG plots.

Example:
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"model": ["SIR", "SIR"], "setting": ["specialized"] * 2,
    ...                      "shot": ["1-shot"] * 2, "dataset": ["headct"] * 2, "seed": [0, 1],
    ...                      "image_AUROC": [0.8, 0.9]})
    >>> summary = summarize(rows)
    >>> summary.loc[0, "image_AUROC_mean"].round(2), summary.loc[0, "seeds"]
    (np.float64(0.85), np.int64(2))
    >>> format_mean_std(0.85, 0.0707, 2)
    '0.850 ± 0.071'

"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

#: CSV columns, in order (metrics: image level unless prefixed ``pixel_``; times in seconds or ms/image).
CSV_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "model",
    "setting",
    "shot",
    "seed",
    "train_datasets",
    "dataset",
    "n_train",
    "n_val",
    "n_test",
    "image_AUROC",
    "image_AUPR",
    "image_F1Score",
    "image_threshold",
    "pixel_AUROC",
    "pixel_AUPR",
    "val_image_AUROC",
    "train_time_s",
    "train_cpu_s",
    "test_ms_per_image",
    "torch_ms_b1",
    "torch_ms_b8",
    "openvino_ms_b1",
    "openvino_ms_b8",
    "openvino_input_batch",
    "openvino_max_abs_diff",
    "openvino_note",
    "export_time_s",
    "peak_rss_fit_mb",
    "peak_rss_mb",
    "model_size_torch_mb",
    "model_size_openvino_mb",
    "cell_wall_s",
    "cell_cpu_s",
    "load_avg_start",
    "load_avg_end",
    "started_unix",
    "finished_unix",
)

#: Metrics averaged over seeds in the summary (mean ± std).
SUMMARY_METRICS: tuple[str, ...] = ("image_AUROC", "image_AUPR", "image_F1Score", "pixel_AUROC", "val_image_AUROC")
#: Cost columns averaged in the summary (mean only).
SUMMARY_COSTS: tuple[str, ...] = (
    "train_time_s",
    "torch_ms_b1",
    "torch_ms_b8",
    "openvino_ms_b1",
    "openvino_ms_b8",
    "peak_rss_mb",
    "model_size_torch_mb",
    "model_size_openvino_mb",
)
_GROUP = ["model", "setting", "shot", "dataset"]


def collect_results(run_dir: Path) -> pd.DataFrame:
    """One row per (finished cell, test dataset), with the cell's cost columns repeated on each row."""
    records: list[dict[str, Any]] = []
    for path in sorted((Path(run_dir) / "cells").glob("*.json")):
        if ".error" in path.name:
            continue
        result = json.loads(path.read_text())
        cell = result["cell"]
        for row in result["rows"]:
            records.append(
                {
                    "cell_id": cell["cell_id"],
                    "model": cell["model"],
                    "setting": cell["setting"],
                    "shot": cell["shot_label"],
                    "seed": cell["seed"],
                    "train_datasets": "+".join(cell["train_datasets"]),
                    **row,
                    **result["cost"],
                }
            )
    frame = pd.DataFrame.from_records(records)
    for column in CSV_COLUMNS:
        if column not in frame:
            frame[column] = math.nan
    return frame[list(CSV_COLUMNS)]


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over seeds) of the metrics, mean of the costs, per model x setting x shot x dataset."""
    metrics = [m for m in SUMMARY_METRICS if m in results]
    costs = [c for c in SUMMARY_COSTS if c in results]
    grouped = results.groupby(_GROUP, sort=False, dropna=False)
    summary = grouped.size().rename("seeds").to_frame()
    for metric in metrics:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_std"] = grouped[metric].std(ddof=1)
    for cost in costs:
        summary[cost] = grouped[cost].mean()
    return summary.reset_index()


def format_mean_std(mean: float, std: float, count: int, digits: int = 3) -> str:
    """``"0.850 ± 0.071"`` (several seeds), ``"0.850"`` (one), ``"–"`` (missing)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if count > 1 and std is not None and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _number(value: float, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(summary: pd.DataFrame) -> str:
    """Render the summary as a GitHub markdown table (pixel AUROC only when some dataset has masks)."""
    with_pixel = "pixel_AUROC_mean" in summary and summary["pixel_AUROC_mean"].notna().any()
    with_val = "val_image_AUROC_mean" in summary and summary["val_image_AUROC_mean"].notna().any()
    header = ["model", "setting", "shot", "dataset", "seeds", "AUROC", "AUPR", "F1 (adaptive thr.)"]
    header += ["pixel AUROC"] if with_pixel else []
    header += ["val AUROC"] if with_val else []
    header += [
        "train s",
        "torch ms/img b1",
        "torch ms/img b8",
        "OpenVINO ms/img b1",
        "OpenVINO ms/img b8",
        "peak MB",
        "size MB (torch / OV)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        seeds = int(row["seeds"])
        cells = [str(row["model"]), str(row["setting"]), str(row["shot"]), str(row["dataset"]), str(seeds)]
        metrics = ["image_AUROC", "image_AUPR", "image_F1Score"] + (["pixel_AUROC"] if with_pixel else [])
        metrics += ["val_image_AUROC"] if with_val else []
        cells += [format_mean_std(row.get(f"{m}_mean"), row.get(f"{m}_std"), seeds) for m in metrics]
        cells += [
            _number(row.get("train_time_s", math.nan), 0),
            *(_number(row.get(c, math.nan), 1) for c in SUMMARY_COSTS[1:5]),
            _number(row.get("peak_rss_mb", math.nan), 0),
            f"{_number(row.get('model_size_torch_mb', math.nan))} / "
            f"{_number(row.get('model_size_openvino_mb', math.nan))}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_over_datasets(results: pd.DataFrame) -> pd.DataFrame:
    """Per model x setting x shot: the mean over datasets of each seed, then mean ± std over seeds.

    This is the figure a universal model is judged by (and, with ``val_image_AUROC``, the one to choose
    settings by).

    Example:
        >>> rows = pd.DataFrame({"model": ["A"] * 4, "setting": ["universal"] * 4, "shot": ["1-shot"] * 4,
        ...                      "seed": [0, 0, 1, 1], "dataset": ["x", "y", "x", "y"],
        ...                      "image_AUROC": [0.6, 0.8, 0.8, 1.0], "val_image_AUROC": [0.5] * 4})
        >>> table = mean_over_datasets(rows)
        >>> float(table.loc[0, "image_AUROC_mean"]), round(float(table.loc[0, "image_AUROC_std"]), 3)
        (0.8, 0.141)

    """
    metrics = [m for m in ("image_AUROC", "val_image_AUROC") if m in results]
    keys = ["model", "setting", "shot"]
    per_seed = results.groupby([*keys, "seed"], sort=False)[metrics].mean().reset_index()
    grouped = per_seed.groupby(keys, sort=False)
    table = grouped.size().rename("seeds").to_frame()
    for metric in metrics:
        table[f"{metric}_mean"] = grouped[metric].mean()
        table[f"{metric}_std"] = grouped[metric].std(ddof=1)
    table["datasets"] = results.groupby(keys, sort=False)["dataset"].nunique()
    return table.reset_index()


def mean_over_datasets_table(results: pd.DataFrame) -> str:
    """Markdown of :func:`mean_over_datasets` (test and validation AUROC)."""
    table = mean_over_datasets(results)
    lines = [
        "| model | setting | shot | datasets | seeds | mean AUROC (test) | mean AUROC (val) |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        seeds = int(row["seeds"])
        cells = [row["model"], row["setting"], row["shot"], str(int(row["datasets"])), str(seeds)]
        cells += [
            format_mean_std(row.get(f"{m}_mean", math.nan), row.get(f"{m}_std", math.nan), seeds)
            for m in ("image_AUROC", "val_image_AUROC")
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def auroc_by_dataset_table(
    results: pd.DataFrame, metric: str = "image_AUROC", datasets: Sequence[str] | None = None
) -> str:
    """Markdown: one row per setting x shot x model, one column per dataset and their mean (mean ± std over seeds).

    The mean column averages the datasets within each seed first; only seeds with every one of ``datasets``
    (default: those in ``results``) finished enter it (``seeds`` says how many), so a grid still running never
    mixes dataset subsets.

    Example:
        >>> rows = pd.DataFrame({"model": ["A"] * 4, "setting": ["universal"] * 4, "shot": ["1-shot"] * 4,
        ...                      "seed": [0, 0, 1, 1], "dataset": ["x", "y", "x", "y"],
        ...                      "image_AUROC": [0.6, 0.8, 0.8, 1.0]})
        >>> print(auroc_by_dataset_table(rows).splitlines()[-1])
        | universal | 1-shot | A | 2 | 0.700 ± 0.141 | 0.900 ± 0.141 | 0.800 ± 0.141 |

    """
    datasets = list(datasets) if datasets else list(dict.fromkeys(results["dataset"]))
    header = ["setting", "shot", "model", "seeds", *datasets, "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["setting", "shot", "model"]
    for key, part in results.sort_values(keys, kind="stable").groupby(keys, sort=False):
        cells = [*map(str, key)]
        complete = part.groupby("seed")["dataset"].nunique()
        complete_seeds = complete[complete == len(datasets)].index
        per_seed = part[part["seed"].isin(complete_seeds)].groupby("seed")[metric].mean()
        cells.append(str(len(per_seed)))
        for dataset in datasets:
            values = part.loc[part["dataset"] == dataset, metric].dropna()
            cells.append(format_mean_std(values.mean() if len(values) else math.nan, values.std(ddof=1), len(values)))
        cells.append(
            format_mean_std(per_seed.mean() if len(per_seed) else math.nan, per_seed.std(ddof=1), len(per_seed))
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _condition(summary: pd.DataFrame) -> pd.Series:
    return summary["setting"] + "\n" + summary["shot"]


def plot_auroc_by_setting(summary: pd.DataFrame, path: Path) -> Path:
    """Plot image AUROC (mean ± std over seeds) per setting/shot as grouped bars (model), one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(summary["dataset"]))
    models = list(dict.fromkeys(summary["model"]))
    conditions = list(dict.fromkeys(_condition(summary)))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets) + 1, 4), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(models))
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = summary[summary["dataset"] == dataset]
        for index, model in enumerate(models):
            rows = part[part["model"] == model]
            keys = _condition(rows).tolist()
            xs = [conditions.index(k) + (index - (len(models) - 1) / 2) * width for k in keys]
            ax.bar(
                xs,
                rows["image_AUROC_mean"],
                width,
                yerr=rows["image_AUROC_std"].fillna(0),
                capsize=3,
                label=model,
            )
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(conditions)), conditions, fontsize=8)
        ax.set_title(dataset)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("image AUROC (mean ± std over seeds)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_vs_auroc(summary: pd.DataFrame, path: Path) -> Path:
    """Scatter: mean image AUROC (over datasets and seeds) vs batch-1 latency, per model x setting x shot.

    Latency is the exported OpenVINO model's ms/image at batch 1 (eager torch where OpenVINO is missing).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = summary.copy()
    frame["latency"] = frame.get("openvino_ms_b1", pd.Series(math.nan, index=frame.index))
    if "torch_ms_b1" in frame:
        frame["latency"] = frame["latency"].fillna(frame["torch_ms_b1"])
    points = (
        frame.groupby(["model", "setting", "shot"], sort=False)
        .agg(auroc=("image_AUROC_mean", "mean"), latency=("latency", "mean"))
        .reset_index()
    )
    fig, ax = plt.subplots(figsize=(6, 4.5))
    models = list(dict.fromkeys(summary["model"]))  # same colour per model as in the AUROC bar plot
    colours = {model: f"C{index % 10}" for index, model in enumerate(models)}
    for _, row in points.iterrows():
        if math.isnan(row["latency"]):
            continue
        full = row["shot"] == "full"
        specialized = row["setting"] == "specialized"
        marker = ("o" if specialized else "s") if full else ("^" if specialized else "v")
        ax.scatter(
            row["latency"],
            row["auroc"],
            marker=marker,
            color=colours[row["model"]],
            s=60,
        )
        ax.annotate(
            f"{row['model']} {row['setting']} {row['shot']}",
            (row["latency"], row["auroc"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("ms / image, batch 1 (OpenVINO CPU; torch eager if not exported)")
    ax.set_ylabel("image AUROC (mean over datasets and seeds)")
    ax.set_title("Latency vs AUROC (colour: model; o/s full-shot, ^/v one-shot; specialized/universal)", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _failures(run_dir: Path) -> list[str]:
    out = []
    for path in sorted((run_dir / "cells").glob("*.error.json")):
        data = json.loads(path.read_text())
        out.append(f"- `{data['cell']['cell_id']}`: {data['error']}")
    return out


def _grid_datasets(run_dir: Path) -> list[str] | None:
    """Dataset names of the run's grid (its ``config.yaml``), or ``None`` when it cannot be read."""
    path = Path(run_dir) / "config.yaml"
    try:
        from anomalib_sir.benchmark.config import BenchmarkConfig

        return list(BenchmarkConfig.from_dict(yaml.safe_load(path.read_text())).datasets)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_report(run_dir: str | Path, extra_notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``results.csv``, ``summary.md``, ``auroc_by_setting.png`` and ``latency_vs_auroc.png``.

    Returns the written paths (only ``results.csv`` and ``summary.md`` when no cell has finished yet).
    """
    run_dir = Path(run_dir)
    results = collect_results(run_dir)
    paths = {"csv": run_dir / "results.csv", "summary": run_dir / "summary.md"}
    tmp = paths["csv"].with_suffix(f".{os.getpid()}.tmp")
    results.to_csv(tmp, index=False)
    os.replace(tmp, paths["csv"])
    environment = {}
    if (run_dir / "environment.json").is_file():
        environment = json.loads((run_dir / "environment.json").read_text())
    lines = [f"# Benchmark `{run_dir.name}`", ""]
    if environment:
        lines += [
            f"Command: `{environment.get('command', '')}`  ",
            f"Machine: {environment.get('cpu_count')} CPUs, {environment.get('platform')}; torch "
            f"{environment.get('torch')}, anomalib {environment.get('anomalib')}, OpenVINO "
            f"{environment.get('openvino')}; {environment.get('threads_per_cell')} thread(s) per cell, "
            f"{environment.get('workers')} cell(s) at a time.",
            "",
        ]
    if results.empty:
        lines += ["No finished cell yet."]
    else:
        summary = summarize(results)
        lines += [markdown_table(summary), ""]
        lines += ["Mean over datasets (per seed, then mean ± std over seeds):", "", mean_over_datasets_table(results)]
        lines += ["", "Image AUROC per dataset, test (mean ± std over seeds; `mean`: over datasets per seed):", ""]
        names = _grid_datasets(run_dir)
        lines += [auroc_by_dataset_table(results, "image_AUROC", names), ""]
        if results["val_image_AUROC"].notna().any():
            lines += ["Image AUROC per dataset, validation (what settings are chosen by):", ""]
            lines += [auroc_by_dataset_table(results, "val_image_AUROC", names), ""]
        paths["auroc_plot"] = plot_auroc_by_setting(summary, run_dir / "auroc_by_setting.png")
        paths["latency_plot"] = plot_latency_vs_auroc(summary, run_dir / "latency_vs_auroc.png")
        load = results[["load_avg_start", "load_avg_end"]].to_numpy()
        per_cell = results.drop_duplicates("cell_id")
        span_min = (per_cell["finished_unix"].max() - per_cell["started_unix"].min()) / 60
        cpu_min = per_cell["cell_cpu_s"].sum() / 60
        cpus = environment.get("cpu_count") or 1
        lines += [
            f"Grid: {len(per_cell)} cells in {span_min:.1f} min wall clock (first cell start to last cell end, "
            "including any pause between resumed sessions); "
            f"the cells used {cpu_min:.1f} CPU-minutes in total, i.e. about {cpu_min / cpus:.1f} min on "
            f"{cpus} otherwise idle CPUs.",
            "",
        ]
        lines += [
            "Metrics: every model is scored by the product's components (`RankPreservingPostProcessor`, "
            "`PerDatasetEvaluator`, as in `anomalib test`): image AUROC / AUPR per dataset on rank-preserving "
            "normalised scores (equal to those of the raw scores); F1 at the threshold the post-processor fits on "
            "each dataset's validation split (F1-optimal when validation holds anomalies), applied to its test "
            "split. `val AUROC`: image AUROC on the validation split, the only figure to choose settings by (the "
            "test split stays unseen). Mean ± std over the seeds (reference draws) of each cell. Costs: mean "
            "over the cells that measured them; latencies are ms per image after warm-up (median of repeats).",
            "",
            f"CPU load average during the cells: {load.min():.1f}–{load.max():.1f} "
            f"(on {environment.get('cpu_count', '?')} CPUs); timings above 1 load per CPU are inflated by "
            "other processes.",
            "",
            "Plots: `auroc_by_setting.png` (image AUROC mean ± std per setting/shot, one bar per model, one "
            "panel per dataset) and `latency_vs_auroc.png` (mean AUROC over datasets vs batch-1 OpenVINO "
            "latency, one point per model x setting x shot).",
        ]
    failures = _failures(run_dir)
    if failures:
        lines += ["", "Failed cells (retried by `--resume`):", *failures]
    lines += ["", *extra_notes]
    paths["summary"].write_text("\n".join(lines).rstrip() + "\n")
    return paths
