"""Export a trained model through anomalib (``Engine.export``) to OpenVINO IR and/or ONNX.

The pre-processor (resize + teacher normalisation) and the post-processor (score normalisation and
thresholds) are part of the exported graph, and anomalib exports with a dynamic batch, height and width:
the exported model takes raw ``[0, 1]`` RGB images of any size, ``(B, 3, H, W)``, and returns
``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``.

Example:
    >>> import tempfile
    >>> from anomalib_sir import Sir
    >>> from anomalib_sir.deploy import export_model
    >>> model = Sir(image_size=(32, 32), width=16, loops=1, pre_trained=False)
    >>> paths = export_model(model, tempfile.mkdtemp(), export_types=("onnx",))  # doctest: +SKIP
    >>> paths["onnx"].name  # doctest: +SKIP
    'model.onnx'

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models import AnomalibModule

from .versioned_export import ONNX_DEFAULTS, ONNX_OPSET, export_versioned

#: Output names of every exported anomalib model with a post-processor, in graph order.
EXPORT_OUTPUTS: tuple[str, ...] = ("pred_score", "pred_label", "anomaly_map", "pred_mask")


def export_model(
    model: AnomalibModule,
    export_root: str | Path,
    export_types: Iterable[ExportType | str] = (ExportType.OPENVINO, ExportType.ONNX),
    engine: Engine | None = None,
    input_size: tuple[int, int] | None = None,
    onnx_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Export ``model`` with :meth:`anomalib.engine.Engine.export`; return ``{export type: model path}``.

    When both ONNX and OpenVINO are asked for, the model is traced once: the OpenVINO IR is converted from
    anomalib's ONNX export exactly as anomalib's ``to_openvino`` does without compression
    (``openvino.convert_model`` then ``openvino.save_model(..., compress_to_fp16=False)``), which halves
    the export time (``torch.export`` tracing dominates it).

    Exports are never overwritten: each goes to ``export_root/weights/<type>`` or, when that folder already
    holds files, to the first free ``weights/<type>-2``, ``-3``, ... (logged, and in the returned paths).
    A failed export leaves no half-written folder (see :mod:`anomalib_sir.deploy.versioned_export`).

    Args:
        model: a trained anomalib model (its post-processor holds the thresholds).
        export_root: folder; files land in ``export_root/weights/<type>[-N]/model.<ext>`` (anomalib layout).
        export_types: any of ``"openvino"``, ``"onnx"``, ``"torch"``.
        engine: the engine to export with (a fresh one rooted at ``export_root`` by default).
        input_size: a fixed ``(H, W)`` input; ``None`` (default) keeps height and width dynamic.
        onnx_kwargs: passed to ``torch.onnx.export`` (also for OpenVINO, which is converted from ONNX),
            e.g. ``{"dynamic_shapes": ...}`` for models whose default export fixes the batch size.
            ``opset_version`` defaults to 18: torch's exporter writes opset 18 anyway and its attempt to
            down-convert to anomalib's default (14) fails noisily; ``verbose`` defaults to ``False`` (no
            ``[torch.onnx]`` progress lines).

    """
    export_root = Path(export_root)
    types = [ExportType(t) for t in export_types]
    engine = engine or Engine(default_root_dir=export_root, logger=False)
    trace_once = ExportType.ONNX in types and ExportType.OPENVINO in types
    paths: dict[str, Path] = {}
    for export_type in types:
        if trace_once and export_type == ExportType.OPENVINO:
            continue  # converted from the ONNX export below

        def run(stage: Path, export_type: ExportType = export_type) -> Path:
            path = engine.export(
                model=model,
                export_type=export_type,
                export_root=stage,
                input_size=input_size,
                onnx_kwargs={**ONNX_DEFAULTS, **(onnx_kwargs or {})},
            )
            if path is None:  # pragma: no cover - anomalib returns None only for unknown types
                msg = f"anomalib did not export {export_type.value}"
                raise RuntimeError(msg)
            return Path(path)

        paths[export_type.value] = export_versioned(export_root, export_type, run)
    if trace_once:
        paths[ExportType.OPENVINO.value] = onnx_to_openvino(paths[ExportType.ONNX.value], export_root)
    return {t.value: paths[t.value] for t in types}


def onnx_to_openvino(onnx_path: str | Path, export_root: str | Path, model_file_name: str = "model") -> Path:
    """Convert an exported ONNX model to OpenVINO IR in anomalib's layout (``weights/openvino[-N]``); return the xml.

    Like every export here it never overwrites: a ``weights/openvino`` folder with files in it gets an
    ``openvino-2`` sibling instead.

    Example:
        >>> onnx_to_openvino("export/weights/onnx/model.onnx", "export")  # doctest: +SKIP
        PosixPath('export/weights/openvino/model.xml')

    """
    import openvino as ov

    def run(stage: Path) -> Path:
        target = stage / "weights" / ExportType.OPENVINO.value / f"{model_file_name}.xml"
        target.parent.mkdir(parents=True)
        ov.save_model(ov.convert_model(Path(onnx_path)), target, compress_to_fp16=False)
        return target

    return export_versioned(export_root, ExportType.OPENVINO, run)


__all__ = ["EXPORT_OUTPUTS", "ONNX_OPSET", "export_model", "onnx_to_openvino"]
