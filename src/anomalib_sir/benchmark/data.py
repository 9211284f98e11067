"""The datamodule of a benchmark cell, built from the product's own datamodules (one data system).

Every dataset of a grid is a ``{class_path, init_args}`` block, the same block a universal setting config
lists under ``members``. A cell's datamodule is that class built with the cell's ``shot`` and ``seed`` and
the grid's ``split_seed`` and ``val_split_mode``; a universal cell wraps its members in
:class:`~anomalib_sir.data.UniversalDataModule`. So every model of a grid, and ``anomalib train`` with the
same block, read the same images through the same readers and splits (see :mod:`anomalib_sir.data.splits`):

* ``split_seed`` fixes each dataset's test and validation images for every model, setting, shot and seed;
* the cell's ``seed`` draws its ``shot`` training normals, so the universal and the specialised model of a
  seed see the same normals;
* ``val_split_mode="from_test"`` (the grid default) makes validation a stratified labelled hold-out, whose
  AUROC is what settings are chosen by; test images are only ever reported.

Example:
    >>> import tempfile
    >>> from anomalib_sir.benchmark.config import BenchmarkConfig
    >>> root = tempfile.mkdtemp()
    >>> blocks = [{"class_path": "anomalib_sir.data.SirDemo",
    ...            "init_args": {"root": root, "source": source, "image_size": 32, "num_train": 6,
    ...                          "num_test_normal": 4, "num_test_abnormal": 4}} for source in ("retina", "histology")]
    >>> config = BenchmarkConfig.from_dict({"datasets": blocks, "models": {"SIR": {"class_path": "anomalib_sir.Sir"}}})
    >>> datamodule = cell_datamodule(config, list(config.datasets), shot=1, seed=0)
    >>> datamodule.setup()
    >>> type(datamodule).__name__, len(datamodule.train_data), datamodule.dataset_names
    ('UniversalDataModule', 2, ['sir_demo_retina', 'sir_demo_histology'])

"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from anomalib.data import AnomalibDataModule

from anomalib_sir.benchmark.config import BenchmarkConfig


def import_object(path: str) -> Any:
    """Import ``"package.module.Name"`` or ``"package.module:Name"``.

    Example:
        >>> import_object("anomalib_sir.data.ClassFolders").__name__
        'ClassFolders'

    """
    module_name, _, attribute = path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def member_datamodule(config: BenchmarkConfig, name: str, shot: int | None, seed: int) -> AnomalibDataModule:
    """Dataset ``name``'s datamodule for a cell: its block with the cell's shot/seed and the grid's split."""
    block = config.datasets[name]
    init_args = {
        **dict(block["init_args"]),
        "name": name,
        "shot": shot,
        "seed": seed,
        "split_seed": config.split_seed,
        "val_split_mode": config.val_split_mode,
        "train_batch_size": config.train_batch_size,
        "eval_batch_size": config.eval_batch_size,
        "num_workers": 0,
    }
    return import_object(block["class_path"])(**init_args)


def cell_datamodule(
    config: BenchmarkConfig, datasets: Sequence[str], shot: int | None, seed: int
) -> AnomalibDataModule:
    """One member datamodule, or a :class:`~anomalib_sir.data.UniversalDataModule` over several."""
    members = [member_datamodule(config, name, shot, seed) for name in datasets]
    if len(members) == 1:
        return members[0]
    from anomalib_sir.data import UniversalDataModule

    return UniversalDataModule(
        members,
        shot=shot,
        seed=seed,
        name="+".join(datasets),
        train_batch_size=config.train_batch_size,
        eval_batch_size=config.eval_batch_size,
        num_workers=0,
    )
