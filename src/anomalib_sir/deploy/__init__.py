"""CPU deployment: export through anomalib, parity with torch eager, scoring new scans.

* :func:`export_model`: OpenVINO IR / ONNX via ``Engine.export`` (pre- and post-processing in the graph,
  dynamic batch and image size).
* :func:`check_parity`: exported runtimes against torch eager (maps within ``1e-3``, same decisions).
* :func:`predict_scans`: PNG/JPEG/DICOM/NIfTI in, ``predictions.csv`` and heatmap PNGs out.
* :class:`TorchRuntime`, :class:`OpenVINORuntime`, :class:`OnnxRuntime`: one calling convention for
  the parity check and the speed benchmark (OpenVINO in float32 by default, also on CPUs where the
  plugin would pick bfloat16: :data:`DEFAULT_OPENVINO_PRECISION`).

Example:
    >>> from anomalib_sir.deploy import check_parity, export_model, predict_scans

"""

from .export import EXPORT_OUTPUTS, export_model, onnx_to_openvino
from .parity import DEFAULT_ATOL, ParityReport, RuntimeParity, check_parity, synthetic_images
from .predict import CSV_COLUMNS, PredictionRun, ScanImage, fresh_directory, iter_scan_images, predict_scans
from .runtime import (
    DEFAULT_OPENVINO_PRECISION,
    OnnxRuntime,
    OpenVINORuntime,
    Runtime,
    TorchRuntime,
    load_runtime,
    openvino_compile_config,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_ATOL",
    "DEFAULT_OPENVINO_PRECISION",
    "EXPORT_OUTPUTS",
    "OnnxRuntime",
    "OpenVINORuntime",
    "ParityReport",
    "PredictionRun",
    "Runtime",
    "RuntimeParity",
    "ScanImage",
    "TorchRuntime",
    "check_parity",
    "export_model",
    "fresh_directory",
    "iter_scan_images",
    "load_runtime",
    "onnx_to_openvino",
    "openvino_compile_config",
    "predict_scans",
    "synthetic_images",
]
