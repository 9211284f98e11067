"""Benchmark configuration: a YAML file read into typed dataclasses.

See ``configs/benchmark.yaml`` for the full real-data grid and ``docs/benchmark.md`` for every key.

Datasets are given exactly like the ``members`` of a universal setting config (``class_path`` +
``init_args`` of a datamodule such as :class:`anomalib_sir.data.ClassFolders`), so a block works in both.

Example:
    >>> config = BenchmarkConfig.from_dict({
    ...     "datasets": [{"class_path": "anomalib_sir.data.ClassFolders",
    ...                   "init_args": {"root": "/data/chest_xray/train", "name": "chest"}}],
    ...     "models": {"SIR": {"class_path": "anomalib_sir.Sir", "trainer": {"max_steps": 5}}},
    ...     "shots": [{"k": 1, "seeds": [0, 1]}, {"k": "all", "seeds": [0]}],
    ... })
    >>> [(s.k, s.seeds) for s in config.shots], list(config.datasets)
    ([(1, (0, 1)), (None, (0,))], ['chest'])
    >>> config.settings, config.val_split_mode
    (('specialized', 'universal'), 'from_test')

"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

Setting = Literal["specialized", "universal"]
SETTINGS: tuple[str, ...] = ("specialized", "universal")
CostMode = Literal["all", "first_seed", "none"]
ExecutorName = Literal["local", "ray"]


@dataclass(frozen=True)
class ShotSpec:
    """A k-shot setting and the seeds (reference draws) it is run with; ``k=None`` means the whole pool."""

    k: int | None
    seeds: tuple[int, ...] = (0,)

    @property
    def label(self) -> str:
        """``"1-shot"``, ``"4-shot"`` or ``"full"``."""
        return "full" if self.k is None else f"{self.k}-shot"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ShotSpec:
        """Parse ``{"k": 1 | "all", "seeds": [...]}``."""
        k = spec["k"]
        k = None if k in (None, "all", "full") else int(k)
        seeds = tuple(int(s) for s in spec.get("seeds", (0,)))
        if not seeds:
            msg = f"Shot {k}: at least one seed is needed"
            raise ValueError(msg)
        return cls(k=k, seeds=seeds)


@dataclass(frozen=True)
class ModelSpec:
    """How to build and train one model of the grid.

    Args:
        class_path: importable ``module.Class`` of an ``AnomalibModule``.
        init_args: constructor arguments; ``pre_processor``/``post_processor``/``evaluator``/``visualizer``
            are set by the harness (same pre-processing for every model, raw scores).
        trainer: Lightning ``Trainer`` arguments for this model (``max_steps``, ``max_epochs``, ...).
        train_batch_size: training batch size (``None``: the run's default).
        openvino: export and time this model with OpenVINO when the run's ``cost.openvino`` is on (turn it
            off for models that cannot be exported).
        shot_init_args: per-shot constructor overrides, keyed by ``k`` (``1``, ``4``, ...) or ``"all"``;
            e.g. PatchCore keeps its whole memory bank in the one-shot cells with
            ``{1: {coreset_sampling_ratio: 1.0}}``.

    Example:
        >>> spec = ModelSpec("anomalib.models.Patchcore", {"coreset_sampling_ratio": 0.01},
        ...                  shot_init_args={"1": {"coreset_sampling_ratio": 1.0}})
        >>> spec.init_args_for(1)["coreset_sampling_ratio"], spec.init_args_for(None)["coreset_sampling_ratio"]
        (1.0, 0.01)

    """

    class_path: str
    init_args: Mapping[str, Any] = field(default_factory=dict)
    trainer: Mapping[str, Any] = field(default_factory=dict)
    train_batch_size: int | None = None
    openvino: bool = True
    shot_init_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def init_args_for(self, shot: int | None) -> dict[str, Any]:
        """Return the constructor arguments of the model in a cell with ``shot`` (``None``: the whole pool)."""
        key = "all" if shot is None else str(shot)
        return {**self.init_args, **dict(self.shot_init_args.get(key) or {})}


@dataclass(frozen=True)
class CostSpec:
    """Which cells measure cost and how.

    Args:
        measure: ``"all"`` cells, the ``"first_seed"`` of each (model, setting, shot, datasets) (latency and
            size do not depend on the reference draw), or ``"none"``.
        warmup: untimed calls before timing.
        repeats: timed calls per batch size (the median is reported).
        batch_sizes: batch sizes timed (ms/image is reported for each).
        openvino: export to OpenVINO and time the exported model on the CPU.

    """

    measure: CostMode = "first_seed"
    warmup: int = 2
    repeats: int = 5
    batch_sizes: tuple[int, ...] = (1, 8)
    openvino: bool = True


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark grid: models x settings x shots (x seeds) x datasets.

    Args:
        name: run name (the results folder is ``<results_root>/<name>-<timestamp>``).
        datasets: dataset name -> ``{"class_path", "init_args"}`` of its datamodule (the YAML gives a list of
            such blocks, named by the datamodule's ``name``: ``init_args.name`` or the root folder's name).
        models: model name -> :class:`ModelSpec`.
        settings: ``"specialized"`` (one model per dataset) and/or ``"universal"`` (one model on all).
        shots: :class:`ShotSpec` list.
        split_seed: seed of every dataset's test/validation split (the same for all models, settings, shots
            and seeds; a cell's ``seed`` only draws its training normals).
        val_split_mode: validation policy of every dataset (``"from_test"``: a stratified labelled hold-out,
            so validation AUROC can choose settings; ``"from_train"``: normal-only, as the setting configs).
        image_size: square input size for every model (pre-processor: resize + teacher mean/std).
        backbone: the shared teacher (installed offline before the grid runs).
        train_batch_size, eval_batch_size: dataloader batch sizes.
        threads: torch / OpenVINO threads per cell.
        workers: cells run at the same time (each in its own process).
        memory_limit_gb: per-cell data-segment limit (``RLIMIT_DATA``); ``None``: no limit.
        cell_timeout_s: a cell running longer is stopped and recorded as failed.
        results_root: parent folder of run folders.
        executor: where cells run: ``"local"`` processes or a ``"ray"`` cluster (see
            :mod:`anomalib_sir.benchmark.executors`).
        cost: :class:`CostSpec`.

    """

    datasets: Mapping[str, Mapping[str, Any]]
    models: Mapping[str, ModelSpec]
    name: str = "benchmark"
    settings: tuple[str, ...] = SETTINGS
    shots: tuple[ShotSpec, ...] = (ShotSpec(1, (0, 1, 2)), ShotSpec(None, (0,)))
    split_seed: int = 0
    val_split_mode: str = "from_test"
    image_size: int = 256
    backbone: str = "tf_efficientnet_lite0"
    train_batch_size: int = 8
    eval_batch_size: int = 16
    threads: int = 1
    workers: int = 1
    memory_limit_gb: float | None = 12.0
    cell_timeout_s: float = 3600.0
    results_root: str = "results/benchmark"
    executor: ExecutorName = "local"
    cost: CostSpec = field(default_factory=CostSpec)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BenchmarkConfig:
        """Validate and convert a parsed YAML mapping.

        Raises:
            ValueError: for unknown keys, unknown settings, or an empty grid.

        """
        raw = dict(raw)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            msg = f"Unknown benchmark config keys: {unknown}. Known: {sorted(known)}"
            raise ValueError(msg)
        if not raw.get("datasets") or not raw.get("models"):
            msg = "The config needs at least one entry in `datasets` and in `models`."
            raise ValueError(msg)
        raw["datasets"] = dataset_blocks(raw["datasets"])
        if raw.get("executor", "local") not in ("local", "ray"):
            msg = f"executor must be 'local' or 'ray', got {raw['executor']!r}"
            raise ValueError(msg)
        from anomalib_sir.data.splits import val_split_mode_of

        raw["val_split_mode"] = val_split_mode_of(raw.get("val_split_mode", "from_test")).value
        raw["models"] = {
            name: ModelSpec(
                class_path=spec["class_path"],
                init_args=dict(spec.get("init_args") or {}),
                trainer=dict(spec.get("trainer") or {}),
                train_batch_size=spec.get("train_batch_size"),
                openvino=bool(spec.get("openvino", True)),
                shot_init_args={
                    ("all" if str(k) in ("all", "full", "None") else str(int(k))): dict(v or {})
                    for k, v in (spec.get("shot_init_args") or {}).items()
                },
            )
            for name, spec in raw["models"].items()
        }
        if "shots" in raw:
            raw["shots"] = tuple(ShotSpec.from_dict(s) for s in raw["shots"])
        if "settings" in raw:
            raw["settings"] = tuple(raw["settings"])
            bad = sorted(set(raw["settings"]) - set(SETTINGS))
            if bad or not raw["settings"]:
                msg = f"settings must be a non-empty subset of {SETTINGS}, got {raw['settings']}"
                raise ValueError(msg)
        if "cost" in raw:
            cost = dict(raw["cost"] or {})
            if "batch_sizes" in cost:
                cost["batch_sizes"] = tuple(int(b) for b in cost["batch_sizes"])
            raw["cost"] = CostSpec(**cost)
            if raw["cost"].measure not in ("all", "first_seed", "none"):
                msg = f"cost.measure must be 'all', 'first_seed' or 'none', got {raw['cost'].measure!r}"
                raise ValueError(msg)
        return cls(**raw)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> BenchmarkConfig:
        """Read a YAML config; top-level ``overrides`` (e.g. from the command line) replace its keys."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        raw.update(overrides or {})
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (written next to the results, and used to detect a changed config on resume).

        ``datasets`` is written back as the list of blocks it was read from.
        """

        def plain(value: Any) -> Any:
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            if isinstance(value, Mapping):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            return value

        data = plain(self)
        data["datasets"] = [plain(block) for block in self.datasets.values()]
        return data


def dataset_blocks(blocks: Any) -> dict[str, dict[str, Any]]:
    """Name the datamodule blocks of a grid: ``[{"class_path", "init_args"}, ...]`` -> ``{name: block}``.

    A block's name is its datamodule's ``name`` (``init_args.name``, else the ``root`` folder's name for
    this package's datamodules); names must be unique. The class is imported to check it exists.

    Raises:
        ValueError: not a list of blocks, a block without ``class_path``, an unknown class, duplicate names.

    Example:
        >>> list(dataset_blocks([{"class_path": "anomalib_sir.data.LabelsFile", "init_args": {"root": "d/headct"}}]))
        ['headct']

    """
    if not isinstance(blocks, list | tuple) or not all(isinstance(b, Mapping) for b in blocks):
        msg = "`datasets` must be a list of {class_path, init_args} blocks (as the members of a universal config)"
        raise ValueError(msg)
    named: dict[str, dict[str, Any]] = {}
    for block in blocks:
        if "class_path" not in block or set(block) - {"class_path", "init_args"}:
            msg = f"A dataset block needs `class_path` and optional `init_args` only, got keys {sorted(block)}"
            raise ValueError(msg)
        init_args = dict(block.get("init_args") or {})
        name = _datamodule_name(str(block["class_path"]), init_args)
        if name in named:
            msg = f"Two datasets are named {name!r}: give each block a distinct `init_args.name`"
            raise ValueError(msg)
        named[name] = {"class_path": str(block["class_path"]), "init_args": init_args}
    return named


def _datamodule_name(class_path: str, init_args: Mapping[str, Any]) -> str:
    import importlib

    module_name, _, class_name = class_path.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        msg = f"Dataset class_path {class_path!r} cannot be imported ({exc})"
        raise ValueError(msg) from exc
    if init_args.get("name"):
        return str(init_args["name"])
    try:
        return str(cls(**init_args).name)
    except TypeError as exc:
        msg = f"Dataset {class_path} with init_args {dict(init_args)}: {exc}"
        raise ValueError(msg) from exc
