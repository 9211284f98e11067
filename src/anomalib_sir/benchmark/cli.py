"""Command line of the benchmark: ``python -m anomalib_sir.benchmark --config configs/benchmark.yaml``.

Also exposed as ``anomalib-sir benchmark``: :func:`configure` declares the arguments and :func:`run` handles
them (the signatures of the ``anomalib-sir`` subcommand registry); :func:`main` is the stand-alone entry.

Example:
    >>> main(["--config", "configs/benchmark_smoke.yaml", "--dry-run"])  # doctest: +SKIP
    0

"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

DESCRIPTION = (
    "Same-harness benchmark of SIR vs PatchCore vs Reverse Distillation (models x settings x shots x seeds x "
    "datasets): accuracy (image AUROC/AUPR/F1) and cost (training time, torch/OpenVINO latency, peak memory, "
    "model size). Results go to a new folder under `results_root`."
)


def build_parser() -> argparse.ArgumentParser:
    """Build the stand-alone ``benchmark`` argument parser.

    Example:
        >>> build_parser().parse_args(["--config", "c.yaml", "--set", "image_size=64"]).set
        ['image_size=64']

    """
    parser = argparse.ArgumentParser(prog="anomalib-sir benchmark", description=DESCRIPTION)
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the benchmark's arguments on ``parser`` (for the ``anomalib-sir`` subcommand registry)."""
    parser.add_argument("--config", type=Path, help="benchmark YAML (see docs/benchmark.md); not with --report")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a top-level config key (value parsed as YAML), e.g. --set image_size=64",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run folder (or 'latest'): finished cells are kept, missing/failed ones run",
    )
    parser.add_argument("--report", metavar="RUN_DIR", type=Path, help="only rewrite the report of a run folder")
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="where cells run: local processes (default: the config's `executor`, 'local') or a Ray cluster "
        '(pip install "anomalib-sir[ray]")',
    )
    parser.add_argument("--ray-address", help="Ray cluster address for --executor ray (default: a local Ray instance)")
    parser.add_argument("--dry-run", action="store_true", help="list the grid's cells and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["image_size=64", "models={...}"]`` -> ``{"image_size": 64, ...}`` (values parsed as YAML).

    Example:
        >>> parse_overrides(["image_size=64", "settings=[universal]"])
        {'image_size': 64, 'settings': ['universal']}

    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--set expects KEY=VALUE, got {item!r}"
            raise ValueError(msg)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run (or resume, list, re-report) a benchmark; return the process exit code.

    Exit codes: 0 all cells finished, 1 some cells failed (their errors are in the run folder), 2 bad usage.
    """
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Handle parsed benchmark arguments (see :func:`configure`); return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from anomalib_sir.benchmark.config import BenchmarkConfig
    from anomalib_sir.benchmark.grid import expand_grid
    from anomalib_sir.benchmark.report import write_report

    if args.report is not None:
        paths = write_report(args.report)
        print(f"Report: {paths['summary']}")
        return 0
    if args.config is None:
        print("anomalib-sir benchmark: error: --config is required (unless --report)", file=sys.stderr)
        return 2
    try:
        config = BenchmarkConfig.from_yaml(args.config, parse_overrides(args.set))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        print(f"anomalib-sir benchmark: error: {exc}", file=sys.stderr)
        return 2
    cells = expand_grid(config)
    if args.dry_run:
        for cell in cells:
            print(cell.cell_id, "(cost)" if cell.measure_cost else "")
        print(f"{len(cells)} cells")
        return 0
    from anomalib_sir.benchmark.runner import prepare_run, run_grid

    try:
        run_dir = prepare_run(config, args.resume)
    except (ValueError, OSError) as exc:  # a dataset folder, labels file or run folder that does not work
        print(f"anomalib-sir benchmark: error: {exc}", file=sys.stderr)
        return 2
    print(f"Run folder: {run_dir}")
    statuses = run_grid(
        config, run_dir, cells, progress=not args.no_progress, executor=args.executor, address=args.ray_address
    )
    failed = {cell: status for cell, status in statuses.items() if status != "ok"}
    print(f"Results: {run_dir / 'results.csv'}\nSummary: {run_dir / 'summary.md'}")
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}. Re-run with --resume {run_dir}")
        return 1
    return 0
