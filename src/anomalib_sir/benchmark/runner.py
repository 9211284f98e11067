"""Run a benchmark grid: every cell through one executor, resumable, with a progress bar.

Cells run through :mod:`anomalib_sir.benchmark.executors` – local processes (default) or a Ray cluster –
each in a fresh process; this module only submits them, collects their results and writes the run folder.

Results live in a run folder ``<results_root>/<name>-<YYYYmmdd-HHMMSS>`` that no later run overwrites:

* ``config.yaml`` (the resolved config) and ``environment.json`` (versions, CPU count, load averages);
* ``cells/<cell_id>.json`` for every finished cell (the resume key) and ``cells/<cell_id>.error.json``
  for failed ones (retried on resume);
* ``results.csv``, ``summary.md`` and the plots (see :mod:`anomalib_sir.benchmark.report`), rewritten
  after every cell.

Example:
    >>> from anomalib_sir.benchmark.runner import new_run_dir
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> first, second = new_run_dir(root, "demo"), new_run_dir(root, "demo")
    >>> first != second and first.is_dir() and second.is_dir()
    True

"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.grid import Cell, cell_fingerprint, expand_grid

logger = logging.getLogger(__name__)


def new_run_dir(results_root: str | Path, name: str) -> Path:
    """Create and return a fresh ``<results_root>/<name>-<timestamp>[-N]`` folder (never an existing one)."""
    root = Path(results_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = root / (f"{name}-{stamp}" if attempt == 0 else f"{name}-{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    msg = f"Could not create a new run folder under {root}"
    raise RuntimeError(msg)


def latest_run_dir(results_root: str | Path, name: str) -> Path:
    """Return the most recent run folder of ``name`` under ``results_root`` (for ``--resume latest``)."""
    runs = sorted(p for p in Path(results_root).expanduser().glob(f"{name}-*") if (p / "config.yaml").is_file())
    if not runs:
        msg = f"No previous '{name}' run under {results_root}"
        raise FileNotFoundError(msg)
    return max(runs, key=lambda p: p.stat().st_mtime)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def finished_cells(run_dir: Path) -> set[str]:
    """Ids of the cells with a result file in ``run_dir`` (skipped on resume)."""
    return {p.name.removesuffix(".json") for p in (run_dir / "cells").glob("*.json") if ".error" not in p.name}


def _environment(config: BenchmarkConfig) -> dict[str, Any]:
    import anomalib
    import openvino
    import torch

    return {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "openvino": openvino.__version__,
        "threads_per_cell": config.threads,
        "workers": config.workers,
        "note": (
            "Timings are wall-clock on a machine that may be shared; load_avg_start/end are recorded per "
            "cell in results.csv."
        ),
    }


def _raise_system_exit(signum: int, frame: object) -> None:
    """SIGTERM handler of the runner: unwind (and so stop the running cells) instead of dying at once."""
    del frame
    raise SystemExit(128 + signum)


def _summary_line(result: dict[str, Any]) -> str:
    cell = result["cell"]
    scores = ", ".join(f"{r['dataset']} AUROC {r['image_AUROC']:.3f}" for r in result["rows"])
    return (
        f"{cell['model']:<10} {cell['setting']:<11} {cell['shot_label']:<6} seed {cell['seed']}: {scores} "
        f"(train {result['cost']['train_time_s']:.0f} s, cell {result['cost']['cell_wall_s']:.0f} s)"
    )


def _record(run_dir: Path, cell: Cell, future: Future) -> tuple[str, str]:
    """Write a finished cell's result (or error) file; return ``(status, message)``."""
    cells_dir = run_dir / "cells"
    try:
        result = future.result()
    except BrokenProcessPool:
        status, error = "failed (worker process died, e.g. out of memory)", "worker process died"
    except Exception as exc:  # the cell's own error, with its traceback
        status, error = "failed", str(exc)
    else:
        _write_json(cells_dir / f"{cell.cell_id}.json", result)
        (cells_dir / f"{cell.cell_id}.error.json").unlink(missing_ok=True)
        return "ok", _summary_line(result)
    _write_json(cells_dir / f"{cell.cell_id}.error.json", {"cell": cell.to_dict(), "error": error})
    first_line = error.splitlines()[0] if error else status
    return status, f"{cell.cell_id}: {status}: {first_line} (see cells/{cell.cell_id}.error.json)"


def run_grid(
    config: BenchmarkConfig,
    run_dir: Path,
    cells: Sequence[Cell] | None = None,
    progress: bool = True,
    executor: str | None = None,
    address: str | None = None,
) -> dict[str, str]:
    """Run the unfinished cells of ``config`` in ``run_dir``; return ``{cell_id: status}`` of those run.

    Args:
        config: the grid.
        run_dir: its run folder (see :func:`prepare_run`).
        cells: the cells to run (default: the whole grid); finished ones are skipped.
        progress: show a progress bar (else log lines).
        executor: ``"local"`` or ``"ray"`` (default: the config's ``executor``).
        address: Ray cluster address (``None``: a local Ray instance).

    Status is ``"ok"`` or ``"failed ..."``. The report is rewritten after every cell.

    """
    from anomalib_sir.benchmark.executors import make_executor
    from anomalib_sir.benchmark.report import write_report

    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    cells = list(cells if cells is not None else expand_grid(config))
    done = finished_cells(run_dir)
    pending = [c for c in cells if c.cell_id not in done]
    statuses: dict[str, str] = {}
    if not pending:
        write_report(run_dir)
        return statuses
    config_dict = config.to_dict()
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(pending),
        desc="benchmark",
        unit="cell",
        disable=not progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    grid_start = time.monotonic()
    previous_handler = signal.signal(signal.SIGTERM, _raise_system_exit)

    def finish(future: Future, cell: Cell) -> bool:
        status, message = _record(run_dir, cell, future)
        statuses[cell.cell_id] = status
        bar.update(1)
        elapsed = time.monotonic() - grid_start
        eta = elapsed / len(statuses) * (len(queue) + len(running))
        counter = f"[{len(statuses) + len(cells) - len(pending)}/{len(cells)}, {elapsed / 60:.0f} min, "
        counter += f"~{eta / 60:.0f} min left]"
        bar.write(f"{counter} {message}") if progress else logger.info("%s %s", counter, message)
        write_report(run_dir)
        return "worker process died" in status

    queue = list(pending)
    running: dict[Future, Cell] = {}
    try:
        with make_executor(executor or config.executor, config.workers, config.threads, address) as pool:
            while queue or running:
                while queue and len(running) < max(1, config.workers):
                    cell = queue.pop(0)
                    running[pool.submit(config_dict, cell.to_dict(), str(run_dir))] = cell
                bar.set_postfix_str(", ".join(c.cell_id for c in running.values()), refresh=True)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = any([finish(future, running.pop(future)) for future in finished])
                if broken:  # a killed cell process breaks a local pool: its other cells fail too
                    wait(running)
                    for future in list(running):
                        finish(future, running.pop(future))
                    pool.restart()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
    return statuses


def reconcile_changed_config(run_dir: Path, saved: BenchmarkConfig, config: BenchmarkConfig) -> dict[str, int]:
    """Resume ``run_dir`` with an edited config: keep the finished cells it does not change.

    A finished cell is kept when the new grid has a cell with the same id and the same
    :func:`~anomalib_sir.benchmark.grid.cell_fingerprint`; the others (and stale error files) move to
    ``cells/superseded/<timestamp>/``. The previous config is kept as ``config.<timestamp>.yaml`` and the
    change is logged in ``environment.json`` (``resumes``). Returns ``{"kept": n, "superseded": m}``.
    """
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cells_dir = run_dir / "cells"
    new_cells = {cell.cell_id: cell for cell in expand_grid(config)}
    moved = kept = 0
    for path in sorted(cells_dir.glob("*.json")):
        data = json.loads(path.read_text())
        old = Cell.from_dict(data["cell"])
        new = new_cells.get(old.cell_id)
        stale = ".error" in path.name or new is None or cell_fingerprint(saved, old) != cell_fingerprint(config, new)
        if stale:
            target = cells_dir / "superseded" / stamp
            target.mkdir(parents=True, exist_ok=True)
            os.replace(path, target / path.name)
            moved += ".error" not in path.name
        else:
            kept += 1
    os.replace(run_dir / "config.yaml", run_dir / f"config.{stamp}.yaml")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    environment_path = run_dir / "environment.json"
    environment = json.loads(environment_path.read_text()) if environment_path.is_file() else {}
    environment.setdefault("resumes", []).append(
        {
            "at": stamp,
            "config_changed": True,
            "kept_cells": kept,
            "superseded_cells": moved,
            "previous_config": f"config.{stamp}.yaml",
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        }
    )
    _write_json(environment_path, environment)
    logger.info("Config changed: kept %d finished cells, %d will be recomputed.", kept, moved)
    return {"kept": kept, "superseded": moved}


def prepare_run(config: BenchmarkConfig, resume: str | Path | None = None) -> Path:
    """Check the teacher and every dataset, then create a new run folder (or reopen ``resume``).

    Every dataset is listed and split once first, so a bad folder fails here (before any folder is written),
    not hours into the grid. Resuming with an edited config keeps the finished cells the edit does not affect (see
    :func:`reconcile_changed_config`).

    """
    from anomalib_sir.benchmark.data import member_datamodule
    from anomalib_sir.teacher import ensure_pretrained_available

    ensure_pretrained_available(config.backbone)
    for name in config.datasets:
        member_datamodule(config, name, None, 0).setup()
    if resume is not None:
        run_dir = latest_run_dir(config.results_root, config.name) if str(resume) == "latest" else Path(resume)
        saved = BenchmarkConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        if saved.to_dict() != config.to_dict():  # compared with defaults filled in on both sides
            reconcile_changed_config(run_dir, saved, config)
    else:
        run_dir = new_run_dir(config.results_root, config.name)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        _write_json(run_dir / "environment.json", _environment(config))
    return run_dir
