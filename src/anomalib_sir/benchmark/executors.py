"""Where benchmark cells run: one executor interface over a local process pool or a Ray cluster.

Both executors run :func:`execute_cell` – one cell, in a fresh process – and return its result dict through a
:class:`concurrent.futures.Future`, so the runner is the same for both:

* :class:`LocalExecutor` (default): a standard :class:`~concurrent.futures.ProcessPoolExecutor` with one task
  per worker process (``max_tasks_per_child=1``), started from a fork server that has already imported
  torch/anomalib (a cell starts in well under a second) and that carries ``MALLOC_MMAP_THRESHOLD_``.
* :class:`RayExecutor` (``--executor ray``, ``pip install "anomalib-sir[ray]"``): the same function as a Ray
  task (``max_calls=1``: a fresh worker per cell, ``num_cpus`` = the grid's ``threads``), on a local Ray
  instance or the cluster at ``address``.

In the cell process :func:`execute_cell` caps the data segment (``memory_limit_gb``), stops the cell after
``cell_timeout_s`` (``SIGALRM``), sends its output to ``<run>/work/<cell>/cell.log`` and deletes the trained
weights and exports afterwards. Per-cell processes isolate crashes and make ``ru_maxrss`` the cell's own peak.

Example:
    >>> with make_executor("local", workers=1, threads=1) as executor:
    ...     type(executor).__name__
    'LocalExecutor'

"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import sys
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from anomalib_sir.allocator import MMAP_THRESHOLD_BYTES

#: Environment every cell process inherits (glibc reads MALLOC_* at process start).
CELL_ENVIRONMENT: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class CellFailedError(RuntimeError):
    """A cell raised; the message holds its exception and traceback (picklable across processes)."""


def _timeout(signum: int, frame: object) -> None:
    del signum, frame
    msg = "cell timed out (cell_timeout_s)"
    raise TimeoutError(msg)


def _redirect_output(log_path: Path) -> None:
    """Send this process's stdout/stderr (Lightning, torch.onnx, OpenVINO chatter) to ``log_path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    handle = log_path.open("a", buffering=1)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    sys.stdout = sys.stderr = handle


def execute_cell(config_dict: dict[str, Any], cell_dict: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Run one cell in this (fresh) process and return its result; raise :class:`CellFailedError` on failure."""
    from anomalib_sir.benchmark.config import BenchmarkConfig
    from anomalib_sir.benchmark.grid import Cell
    from anomalib_sir.benchmark.worker import run_cell

    config = BenchmarkConfig.from_dict(config_dict)
    cell = Cell.from_dict(cell_dict)
    os.environ.update(CELL_ENVIRONMENT)
    if config.memory_limit_gb:
        limit = int(config.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    work_dir = Path(run_dir) / "work" / cell.cell_id
    work_dir.mkdir(parents=True, exist_ok=True)
    _redirect_output(work_dir / "cell.log")
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(max(1, int(config.cell_timeout_s)))
    try:
        return run_cell(config, cell, work_dir)
    except BaseException as exc:
        raise CellFailedError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for bulky in ("engine", "export"):  # trained weights and exported models are not kept
            shutil.rmtree(work_dir / bulky, ignore_errors=True)


class CellExecutor(Protocol):
    """What the runner needs: submit a cell, get a future of its result, shut down (a context manager)."""

    def submit(self, config_dict: dict[str, Any], cell_dict: dict[str, Any], run_dir: str) -> Future:
        """Start a cell; the future resolves to its result dict or raises."""
        ...

    def restart(self) -> None:
        """Replace workers after one died (the local pool breaks when a cell process is killed)."""
        ...

    def shutdown(self, cancel: bool = False) -> None:
        """Stop accepting cells; ``cancel``: stop running ones too."""
        ...

    def __enter__(self) -> CellExecutor: ...

    def __exit__(self, *exc: object) -> None: ...


class LocalExecutor:
    """Cells in local processes: ``workers`` at a time, one fresh process per cell."""

    def __init__(self, workers: int = 1, threads: int = 1) -> None:
        self.workers = max(1, int(workers))
        self.threads = int(threads)
        self._pool = self._new_pool()

    def _context(self) -> multiprocessing.context.BaseContext:
        os.environ.update(CELL_ENVIRONMENT)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        if "forkserver" not in multiprocessing.get_all_start_methods():  # not on Linux: fresh interpreters
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        # a grid's code is frozen when it starts: edits during a run do not leak into its cells
        context.set_forkserver_preload(["anomalib_sir.benchmark.executors", "anomalib_sir.benchmark.worker"])
        return context

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context(), max_tasks_per_child=1)

    def submit(self, config_dict: dict[str, Any], cell_dict: dict[str, Any], run_dir: str) -> Future:
        """Queue a cell on the pool."""
        return self._pool.submit(execute_cell, config_dict, cell_dict, run_dir)

    def restart(self) -> None:
        """Replace a broken pool (a cell process was killed, e.g. out of memory)."""
        self.shutdown(cancel=True)
        self._pool = self._new_pool()

    def shutdown(self, cancel: bool = False) -> None:
        """Shut the pool down; ``cancel`` also kills running cells (Lightning traps SIGTERM)."""
        if cancel:
            # ProcessPoolExecutor has no public way to stop running tasks: kill its worker processes.
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(cancel=exc[0] is not None)


class RayExecutor:
    """Cells as Ray tasks (a fresh worker per cell) on a local instance or the cluster at ``address``."""

    def __init__(self, threads: int = 1, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            msg = 'The Ray executor needs Ray: pip install "anomalib-sir[ray]"'
            raise RuntimeError(msg) from exc
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            options: dict[str, Any] = {"runtime_env": {"env_vars": dict(CELL_ENVIRONMENT)}, "log_to_driver": False}
            if address:
                ray.init(address=address, **options)
            else:  # a local instance sized for `workers` cells of `threads` CPUs
                ray.init(num_cpus=max(1, int(workers or 1)) * max(1, int(threads)), include_dashboard=False, **options)
        self._task = ray.remote(max_calls=1, num_cpus=max(1, int(threads)))(execute_cell)
        self._refs: list[Any] = []

    def submit(self, config_dict: dict[str, Any], cell_dict: dict[str, Any], run_dir: str) -> Future:
        """Start a Ray task for the cell."""
        ref = self._task.remote(config_dict, cell_dict, run_dir)
        self._refs.append(ref)
        return ref.future()

    def restart(self) -> None:
        """Nothing to do: Ray replaces dead workers itself."""

    def shutdown(self, cancel: bool = False) -> None:
        """Cancel running tasks if asked; stop the Ray instance this executor started."""
        if cancel:
            for ref in self._refs:
                self._ray.cancel(ref, force=True)
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(cancel=exc[0] is not None)


def make_executor(name: str, workers: int = 1, threads: int = 1, address: str | None = None) -> CellExecutor:
    """Return the executor called ``name`` (``"local"`` or ``"ray"``).

    Raises:
        ValueError: an unknown name.

    """
    if name == "local":
        return LocalExecutor(workers=workers, threads=threads)
    if name == "ray":
        return RayExecutor(threads=threads, address=address, workers=workers)
    msg = f"Unknown executor {name!r}: use 'local' or 'ray'"
    raise ValueError(msg)
