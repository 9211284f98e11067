"""CPU deployment: export through anomalib, parity with torch eager, scoring new scans.

* :func:`export_model`: OpenVINO IR / ONNX via ``Engine.export`` (pre- and post-processing in the graph,
  dynamic batch and image size), each into a fresh ``weights/<type>[-N]`` folder (never overwritten).
* :class:`VersionedExportMixin`: the same never-overwrite rule for anomalib's ``to_onnx`` / ``to_openvino``
  / ``to_torch`` (so also for ``anomalib export``).
* :func:`load_sir_checkpoint`: a ``.ckpt`` as ``Sir``, or a one-line error naming the model it belongs to.
* :func:`check_parity`: exported runtimes against torch eager (maps within ``1e-3``, same decisions).
* :func:`predict_scans`: PNG/JPEG/DICOM/NIfTI in, ``predictions.csv`` and heatmap PNGs out.
* :class:`TorchRuntime`, :class:`OpenVINORuntime`, :class:`OnnxRuntime`: one calling convention for
  the parity check and the speed benchmark (OpenVINO in float32 by default, also on CPUs where the
  plugin would pick bfloat16: :data:`DEFAULT_OPENVINO_PRECISION`).

Names are imported on first use, so importing one light module (``anomalib_sir.deploy.errors``,
``anomalib_sir.deploy.versioned_export``) does not load the runtimes.

Example:
    >>> from anomalib_sir.deploy import check_parity, export_model, predict_scans

"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> submodule that defines it.
_EXPORTS: dict[str, str] = {
    "CheckpointError": "errors",
    "DeployError": "errors",
    "DomainAdded": "add_domain",
    "add_domain_to_checkpoint": "add_domain",
    "CheckpointInfo": "checkpoint",
    "inspect_checkpoint": "checkpoint",
    "load_sir_checkpoint": "checkpoint",
    "EXPORT_OUTPUTS": "export",
    "export_model": "export",
    "onnx_to_openvino": "export",
    "VersionedExportMixin": "versioned_export",
    "export_versioned": "versioned_export",
    "versioned_folder": "versioned_export",
    "DEFAULT_ATOL": "parity",
    "ParityReport": "parity",
    "RuntimeParity": "parity",
    "check_parity": "parity",
    "synthetic_images": "parity",
    "CSV_COLUMNS": "predict",
    "PredictionRun": "predict",
    "ScanImage": "predict",
    "check_model_file": "predict",
    "fresh_directory": "predict",
    "draw_heatmap": "predict",
    "heatmap_figure": "predict",
    "iter_scan_images": "predict",
    "plan_inputs": "predict",
    "predict_scans": "predict",
    "DEFAULT_OPENVINO_PRECISION": "runtime",
    "OnnxRuntime": "runtime",
    "OpenVINORuntime": "runtime",
    "Runtime": "runtime",
    "TorchRuntime": "runtime",
    "load_runtime": "runtime",
    "openvino_compile_config": "runtime",
}

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_ATOL",
    "DEFAULT_OPENVINO_PRECISION",
    "EXPORT_OUTPUTS",
    "CheckpointError",
    "CheckpointInfo",
    "DeployError",
    "DomainAdded",
    "OnnxRuntime",
    "OpenVINORuntime",
    "ParityReport",
    "PredictionRun",
    "Runtime",
    "RuntimeParity",
    "ScanImage",
    "TorchRuntime",
    "VersionedExportMixin",
    "add_domain_to_checkpoint",
    "check_model_file",
    "check_parity",
    "draw_heatmap",
    "export_model",
    "export_versioned",
    "fresh_directory",
    "heatmap_figure",
    "inspect_checkpoint",
    "iter_scan_images",
    "load_runtime",
    "load_sir_checkpoint",
    "onnx_to_openvino",
    "openvino_compile_config",
    "plan_inputs",
    "predict_scans",
    "synthetic_images",
    "versioned_folder",
]


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access (PEP 562)."""
    if name not in _EXPORTS:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .add_domain import DomainAdded, add_domain_to_checkpoint
    from .checkpoint import CheckpointInfo, inspect_checkpoint, load_sir_checkpoint
    from .errors import CheckpointError, DeployError
    from .export import EXPORT_OUTPUTS, export_model, onnx_to_openvino
    from .parity import DEFAULT_ATOL, ParityReport, RuntimeParity, check_parity, synthetic_images
    from .predict import (
        CSV_COLUMNS,
        PredictionRun,
        ScanImage,
        check_model_file,
        draw_heatmap,
        fresh_directory,
        heatmap_figure,
        iter_scan_images,
        plan_inputs,
        predict_scans,
    )
    from .runtime import (
        DEFAULT_OPENVINO_PRECISION,
        OnnxRuntime,
        OpenVINORuntime,
        Runtime,
        TorchRuntime,
        load_runtime,
        openvino_compile_config,
    )
    from .versioned_export import VersionedExportMixin, export_versioned, versioned_folder
