"""The benchmark grid: one :class:`Cell` per training run (model x setting x shot x seed x datasets).

A *specialized* cell trains on one dataset and is tested on it; a *universal* cell trains one model on
the union of all datasets and is tested on each of them (one result row per test dataset).

Example:
    >>> from anomalib_sir.benchmark.config import BenchmarkConfig
    >>> config = BenchmarkConfig.from_dict({
    ...     "datasets": [{"class_path": "anomalib_sir.data.ClassFolders", "init_args": {"root": r}} for r in "ab"],
    ...     "models": {"SIR": {"class_path": "anomalib_sir.Sir"}},
    ...     "shots": [{"k": 1, "seeds": [0, 1, 2]}, {"k": "all", "seeds": [0]}],
    ... })
    >>> cells = expand_grid(config)
    >>> len(cells)  # (3 + 1) draws x (2 specialized + 1 universal)
    12
    >>> cells[0].cell_id, cells[0].measure_cost
    ('SIR__specialized__1-shot__seed0__a', True)
    >>> cells[2].test_datasets
    ('a', 'b')

"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from anomalib_sir.benchmark.config import BenchmarkConfig


@dataclass(frozen=True)
class Cell:
    """One training run of the grid and the datasets its model is tested on."""

    model: str
    setting: str
    shot: int | None
    seed: int
    train_datasets: tuple[str, ...]
    test_datasets: tuple[str, ...]
    measure_cost: bool = True

    @property
    def shot_label(self) -> str:
        """``"1-shot"`` or ``"full"``."""
        return "full" if self.shot is None else f"{self.shot}-shot"

    @property
    def cell_id(self) -> str:
        """Stable, file-name-safe identifier (the key of a finished cell on resume)."""
        raw = f"{self.model}__{self.setting}__{self.shot_label}__seed{self.seed}__{'+'.join(self.train_datasets)}"
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON)."""
        return {**asdict(self), "cell_id": self.cell_id, "shot_label": self.shot_label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model=data["model"],
            setting=data["setting"],
            shot=data["shot"],
            seed=int(data["seed"]),
            train_datasets=tuple(data["train_datasets"]),
            test_datasets=tuple(data["test_datasets"]),
            measure_cost=bool(data.get("measure_cost", True)),
        )


def expand_grid(config: BenchmarkConfig) -> list[Cell]:
    """All cells of ``config``, ordered so that every model of a (shot, seed) round runs before the next.

    Cost is measured in every cell (``cost.measure="all"``), in the first seed of each shot
    (``"first_seed"``), or never (``"none"``).
    """
    datasets = tuple(config.datasets)
    cells: list[Cell] = []
    for shot in config.shots:
        for seed in shot.seeds:
            measure = config.cost.measure == "all" or (config.cost.measure == "first_seed" and seed == shot.seeds[0])
            groups: list[tuple[str, tuple[str, ...]]] = []
            if "specialized" in config.settings:
                groups += [("specialized", (name,)) for name in datasets]
            if "universal" in config.settings:
                groups.append(("universal", datasets))
            for setting, members in groups:
                for model in config.models:
                    cells.append(Cell(model, setting, shot.k, seed, members, members, measure))
    return cells


#: Config keys that change where or how fast a grid runs, not what a cell computes.
_RUN_ONLY_KEYS: tuple[str, ...] = (
    "name",
    "results_root",
    "executor",
    "workers",
    "cell_timeout_s",
    "memory_limit_gb",
    "models",
    "settings",
    "shots",
    "datasets",
)


def cell_fingerprint(config: BenchmarkConfig, cell: Cell) -> str:
    """Hash everything that determines a cell's result.

    That is the cell, its model's resolved spec, its datasets and the run-wide data/model/cost settings; not
    where or how many cells run at a time.

    On ``--resume`` with an edited config, finished cells whose fingerprint is unchanged are kept.

    Example:
        >>> from anomalib_sir.benchmark.config import BenchmarkConfig
        >>> raw = {"datasets": [{"class_path": "anomalib_sir.data.ClassFolders", "init_args": {"root": "a"}}],
        ...        "models": {"SIR": {"class_path": "anomalib_sir.Sir"}, "PC": {"class_path": "x.Patchcore"}}}
        >>> config = BenchmarkConfig.from_dict(raw)
        >>> cell = expand_grid(config)[0]
        >>> more = BenchmarkConfig.from_dict({**raw, "workers": 2, "models": {**raw["models"],
        ...                                   "PC": {"class_path": "x.Patchcore", "init_args": {"k": 1}}}})
        >>> cell_fingerprint(config, cell) == cell_fingerprint(more, cell)  # SIR's cell is unaffected
        True
        >>> smaller = BenchmarkConfig.from_dict({**raw, "image_size": 64})
        >>> cell_fingerprint(config, cell) == cell_fingerprint(smaller, cell)
        False

    """
    data = {k: v for k, v in config.to_dict().items() if k not in _RUN_ONLY_KEYS}
    spec = config.models[cell.model]
    data["model"] = {
        "class_path": spec.class_path,
        "init_args": spec.init_args_for(cell.shot),
        "trainer": dict(spec.trainer),
        "train_batch_size": spec.train_batch_size,
        "openvino": spec.openvino,
    }
    names = dict.fromkeys((*cell.train_datasets, *cell.test_datasets))
    data["datasets"] = {name: config.datasets.get(name) for name in names}
    data["cell"] = cell.to_dict()
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
