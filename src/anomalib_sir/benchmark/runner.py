"""Run a benchmark grid: one child process per cell, resumable, with a progress bar.

Each cell runs in a fresh process forked from a *fork server* that has already imported torch, anomalib
and OpenVINO (so a cell starts in well under a second instead of ~12 s) and that was started with
``MALLOC_MMAP_THRESHOLD_`` in its environment (glibc reads it at process start; the child also sets the
same threshold with ``mallopt``). Per-cell processes keep PatchCore's core-set selection inside memory,
isolate a crash or an out-of-memory kill to its cell, and make ``ru_maxrss`` the peak memory *of that
cell*. A data-segment limit (``memory_limit_gb``) makes a runaway cell fail instead of pushing the
shared machine into swap/OOM.

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

import ctypes
import datetime as dt
import json
import logging
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from anomalib_sir.allocator import MMAP_THRESHOLD_BYTES
from anomalib_sir.benchmark.config import BenchmarkConfig
from anomalib_sir.benchmark.grid import Cell, cell_fingerprint, expand_grid

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

#: Environment every cell process inherits (glibc reads MALLOC_* at process start).
CELL_ENVIRONMENT: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


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


def _child(config_dict: dict[str, Any], cell_dict: dict[str, Any], run_dir: str) -> None:
    """Cell process entry point: run the cell, write its result (or error) file, exit non-zero on error."""
    from anomalib_sir.benchmark.worker import run_cell

    config = BenchmarkConfig.from_dict(config_dict)
    cell = Cell.from_dict(cell_dict)
    cells_dir = Path(run_dir) / "cells"
    _die_with_parent()
    if config.memory_limit_gb:
        limit = int(config.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    work_dir = Path(run_dir) / "work" / cell.cell_id
    work_dir.mkdir(parents=True, exist_ok=True)
    _redirect_output(work_dir / "cell.log")
    try:
        result = run_cell(config, cell, work_dir)
    except BaseException as exc:
        _write_json(
            cells_dir / f"{cell.cell_id}.error.json",
            {"cell": cell.to_dict(), "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
        )
        raise SystemExit(1) from exc
    _write_json(cells_dir / f"{cell.cell_id}.json", result)
    (cells_dir / f"{cell.cell_id}.error.json").unlink(missing_ok=True)
    for bulky in ("engine", "export"):  # trained weights and exported models are not kept
        shutil.rmtree(work_dir / bulky, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this cell if its parent (the fork server) dies, so no orphan keeps running."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _redirect_output(log_path: Path) -> None:
    """Send this process's stdout/stderr (Lightning, torch.onnx, OpenVINO chatter) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    handle = log_path.open("a", buffering=1)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle


def _raise_system_exit(signum: int, frame: object) -> None:
    """SIGTERM handler of the runner: unwind (and so stop the running cells) instead of dying at once."""
    del frame
    raise SystemExit(128 + signum)


@dataclass
class _Running:
    cell: Cell
    process: multiprocessing.process.BaseProcess
    started: float


def _context(threads: int) -> multiprocessing.context.BaseContext:
    """Return a fork-server context whose server has the cell environment and the heavy imports preloaded."""
    os.environ.update(CELL_ENVIRONMENT)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "forkserver" not in multiprocessing.get_all_start_methods():  # not on Linux: fresh interpreters
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # preload the runner too: a grid's code is frozen when it starts, edits during a run do not leak into cells
    context.set_forkserver_preload(["anomalib_sir.benchmark.runner", "anomalib_sir.benchmark.worker"])
    return context


def _summary_line(result: dict[str, Any]) -> str:
    cell = result["cell"]
    scores = ", ".join(f"{r['dataset']} AUROC {r['image_AUROC']:.3f}" for r in result["rows"])
    return (
        f"{cell['model']:<10} {cell['setting']:<11} {cell['shot_label']:<6} seed {cell['seed']}: {scores} "
        f"(train {result['cost']['train_time_s']:.0f} s, cell {result['cost']['cell_wall_s']:.0f} s)"
    )


def run_grid(
    config: BenchmarkConfig,
    run_dir: Path,
    cells: Sequence[Cell] | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Run the unfinished cells of ``config`` in ``run_dir``; return ``{cell_id: status}`` of those run.

    Status is ``"ok"``, ``"failed (exit N)"`` or ``"timeout"``. The report is rewritten after every cell.
    """
    from anomalib_sir.benchmark.report import write_report

    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    cells = list(cells if cells is not None else expand_grid(config))
    done = finished_cells(run_dir)
    pending = [c for c in cells if c.cell_id not in done]
    statuses: dict[str, str] = {}
    if not pending:
        write_report(run_dir)
        return statuses
    context = _context(config.threads)
    config_dict = config.to_dict()
    running: list[_Running] = []
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(pending),
        desc="benchmark",
        unit="cell",
        disable=not progress,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    shown = ""
    grid_start = time.monotonic()
    previous_handler = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        while pending or running:
            while pending and len(running) < max(1, config.workers):
                cell = pending.pop(0)
                process = context.Process(
                    target=_child, args=(config_dict, cell.to_dict(), str(run_dir)), name=cell.cell_id
                )
                process.start()
                running.append(_Running(cell, process, time.monotonic()))
            label = ", ".join(r.cell.cell_id for r in running)
            if label != shown:
                bar.set_postfix_str(label, refresh=True)
                shown = label
            time.sleep(0.5)
            for job in list(running):
                elapsed = time.monotonic() - job.started
                if job.process.is_alive() and elapsed <= config.cell_timeout_s:
                    continue
                if job.process.is_alive():
                    job.process.kill()
                    job.process.join()
                    status = "timeout"
                    _write_json(
                        run_dir / "cells" / f"{job.cell.cell_id}.error.json",
                        {"cell": job.cell.to_dict(), "error": f"timeout after {config.cell_timeout_s} s"},
                    )
                else:
                    job.process.join()
                    status = "ok" if job.process.exitcode == 0 else f"failed (exit {job.process.exitcode})"
                    error_file = run_dir / "cells" / f"{job.cell.cell_id}.error.json"
                    if status != "ok" and not error_file.is_file():  # killed (e.g. out of memory)
                        _write_json(
                            error_file,
                            {"cell": job.cell.to_dict(), "error": f"process exited with {job.process.exitcode}"},
                        )
                running.remove(job)
                statuses[job.cell.cell_id] = status
                bar.update(1)
                if status == "ok":
                    result = json.loads((run_dir / "cells" / f"{job.cell.cell_id}.json").read_text())
                    message = _summary_line(result)
                else:
                    message = f"{job.cell.cell_id}: {status} (see cells/{job.cell.cell_id}.error.json)"
                finished = len(statuses)
                elapsed = time.monotonic() - grid_start
                eta = elapsed / finished * (len(pending) + len(running))
                done_now = len(cells) - len(pending) - len(running)
                counter = f"[{done_now}/{len(cells)}, {elapsed / 60:.0f} min, ~{eta / 60:.0f} min left]"
                if progress:
                    bar.write(f"{counter} {message}")
                else:
                    logger.info("%s %s", counter, message)
                write_report(run_dir)
    finally:
        for job in running:  # interrupted: stop the children we started (SIGKILL: Lightning traps SIGTERM)
            job.process.kill()
            job.process.join()
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
    """Create a new run folder (or reopen ``resume``), write config/environment, install the teacher.

    Resuming with an edited config keeps the finished cells the edit does not affect (see
    :func:`reconcile_changed_config`).

    """
    from anomalib_sir.benchmark.worker import build_data_factory
    from anomalib_sir.teacher import ensure_pretrained_available

    if resume is not None:
        run_dir = latest_run_dir(config.results_root, config.name) if str(resume) == "latest" else Path(resume)
        saved = BenchmarkConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        if saved.to_dict() != config.to_dict():  # compared with defaults filled in on both sides
            reconcile_changed_config(run_dir, saved, config)
    else:
        run_dir = new_run_dir(config.results_root, config.name)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        _write_json(run_dir / "environment.json", _environment(config))
    os.environ.update(CELL_ENVIRONMENT)
    ensure_pretrained_available(config.backbone)
    factory = build_data_factory(config)
    for name in config.datasets if not config.data_factory else ():
        factory.split(name)  # read, split and cache the images once, outside the timed cells
    return run_dir
