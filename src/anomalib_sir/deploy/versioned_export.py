"""Exports that never overwrite an earlier export: ``weights/onnx``, then ``weights/onnx-2``, ``-3``, ...

anomalib's :class:`~anomalib.models.components.base.export_mixin.ExportMixin` writes
``<export_root>/weights/<type>/model.<ext>`` and silently replaces whatever is there, so a second
``anomalib export`` (or an export of another model to the same default root) destroys the first one.

:func:`export_versioned` runs an export into a hidden staging folder next to the target and then moves the
finished folder to ``weights/<type>`` or, if that already holds files, to the first free ``weights/<type>-N``.
The export is therefore also all-or-nothing: a failed export leaves no half-written folder behind. The
folder used is logged (a warning when it is not the default one) and returned.

:class:`VersionedExportMixin` applies this to ``to_torch``, ``to_onnx`` and ``to_openvino`` (same signatures as
anomalib's); put it before ``AnomalibModule`` in a model's bases::

    class Sir(VersionedExportMixin, MemoryBankMixin, AnomalibModule): ...

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> def write(stage: Path) -> Path:
    ...     target = stage / "weights" / "onnx" / "model.onnx"
    ...     target.parent.mkdir(parents=True)
    ...     target.write_bytes(b"onnx")
    ...     return target
    >>> export_versioned(root, "onnx", write).relative_to(root).as_posix()
    'weights/onnx/model.onnx'
    >>> export_versioned(root, "onnx", write).relative_to(root).as_posix()
    'weights/onnx-2/model.onnx'

"""

from __future__ import annotations

import contextvars
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib.deploy.export import ExportType

if TYPE_CHECKING:
    from anomalib import TaskType
    from anomalib.data import AnomalibDataModule
    from anomalib.deploy.export import CompressionType
    from torchmetrics import Metric

logger = logging.getLogger(__name__)

#: Set while an export runs, so that nested exports (``to_openvino`` exports ONNX into a temporary
#: folder first) are not versioned and logged again.
_EXPORTING: contextvars.ContextVar[bool] = contextvars.ContextVar("anomalib_sir_exporting", default=False)

STAGING_PREFIX = ".partial-"

#: ONNX opset of the exports: torch's dynamo exporter implements nothing lower, and its attempt to
#: down-convert to anomalib's default (14) fails with a logged traceback (the export still succeeds).
ONNX_OPSET = 18

#: ``torch.onnx.export`` defaults of :meth:`VersionedExportMixin.to_onnx` (explicit arguments win):
#: opset 18 (see :data:`ONNX_OPSET`) and no ``[torch.onnx] ...`` progress lines.
ONNX_DEFAULTS: dict[str, Any] = {"opset_version": ONNX_OPSET, "verbose": False}


def _is_free(folder: Path) -> bool:
    """Whether ``folder`` does not exist or is an empty folder."""
    if not folder.exists():
        return True
    return folder.is_dir() and not any(folder.iterdir())


def versioned_folder(path: str | Path) -> Path:
    """``path`` if it is free (missing or empty), else the first free ``path-2``, ``path-3``, ...

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> versioned_folder(root / "onnx").name
        'onnx'
        >>> (root / "onnx").mkdir(); (root / "onnx" / "model.onnx").touch()
        >>> versioned_folder(root / "onnx").name
        'onnx-2'

    """
    path = Path(path)
    candidate, index = path, 1
    while not _is_free(candidate):
        index += 1
        candidate = path.with_name(f"{path.name}-{index}")
    return candidate


def _move_to_free_folder(source: Path, target: Path) -> Path:
    """Rename the folder ``source`` to ``target`` or its first free ``-N`` sibling; return where it went."""
    base, index = target, 1
    while True:
        if _is_free(target):
            try:
                if target.exists():
                    target.rmdir()  # empty: replaceable on every OS
                source.rename(target)
                return target
            except OSError:  # another process took it meanwhile
                if not target.exists() or _is_free(target):
                    raise
        index += 1
        target = base.with_name(f"{base.name}-{index}")


def export_versioned(
    export_root: str | Path, export_type: ExportType | str, export: Callable[[Path], str | Path]
) -> Path:
    """Run ``export(stage_root)`` into a staging root, then publish it as a fresh ``weights/<type>[-N]`` folder.

    Args:
        export_root: the export root (files land in ``export_root/weights/<type>[-N]/``).
        export_type: ``"onnx"``, ``"openvino"`` or ``"torch"`` (the folder name).
        export: writes the export below the root it is given, in anomalib's layout
            (``<root>/weights/<type>/...``), and returns the main file's path.

    Returns:
        The main file's path in the published folder.

    """
    export_type = ExportType(export_type)
    weights = Path(export_root) / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{export_type.value}-", dir=weights))
    token = _EXPORTING.set(True)
    try:
        produced = Path(export(staging))
        source = staging / "weights" / export_type.value
        try:
            relative = produced.resolve().relative_to(source.resolve())
        except ValueError as error:
            msg = f"export wrote {produced}, outside its folder {source}"
            raise RuntimeError(msg) from error
        default = weights / export_type.value
        target = _move_to_free_folder(source, default)
    finally:
        _EXPORTING.reset(token)
        shutil.rmtree(staging, ignore_errors=True)
    path = target / relative
    if target != default:
        logger.warning(
            "%s already holds an export; this %s export went to %s (exports are never overwritten)",
            default,
            export_type.value,
            path,
        )
    else:
        logger.info("Exported %s model to %s", export_type.value, path)
    return path


def exporting() -> bool:
    """Whether the caller runs inside :func:`export_versioned` (nested exports are not versioned)."""
    return _EXPORTING.get()


class VersionedExportMixin:
    """anomalib's ``to_torch`` / ``to_onnx`` / ``to_openvino``, each into a fresh, versioned folder.

    Same signatures and return values as anomalib's ``ExportMixin``; only the folder differs when
    ``<export_root>/weights/<type>`` already holds files (``<type>-2``, ``<type>-3``, ... then), and an
    export that fails leaves nothing behind. ONNX (also the ONNX step of ``to_openvino``) is exported with
    :data:`ONNX_DEFAULTS` unless the caller passes other values: opset 18 instead of anomalib's 14, whose
    failed down-conversion printed a traceback into every successful export log. Must come before
    ``AnomalibModule`` in the bases.
    """

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export to ``<export_root>/weights/torch[-N]/<model_file_name>.pt`` (see ``ExportMixin.to_torch``)."""
        parent = super()
        if exporting():
            return parent.to_torch(export_root, model_file_name)  # type: ignore[misc]
        return export_versioned(
            export_root,
            ExportType.TORCH,
            lambda stage: parent.to_torch(stage, model_file_name),  # type: ignore[misc]
        )

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Export to ``<export_root>/weights/onnx[-N]/<model_file_name>.onnx`` (see ``ExportMixin.to_onnx``)."""
        parent = super()
        kwargs = {**ONNX_DEFAULTS, **kwargs}
        if exporting():
            return parent.to_onnx(export_root, model_file_name, input_size, **kwargs)  # type: ignore[misc]
        return export_versioned(
            export_root,
            ExportType.ONNX,
            lambda stage: parent.to_onnx(stage, model_file_name, input_size, **kwargs),  # type: ignore[misc]
        )

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | None = None,
        task: TaskType | None = None,
        max_drop: float = 0.01,
        ov_kwargs: dict[str, Any] | None = None,
        onnx_kwargs: dict[str, Any] | None = None,
    ) -> Path:
        """Export to ``<export_root>/weights/openvino[-N]/<model_file_name>.xml`` (see ``ExportMixin.to_openvino``)."""
        parent = super()

        def run(root: str | Path) -> Path:
            return parent.to_openvino(  # type: ignore[misc]
                root,
                model_file_name,
                input_size,
                compression_type=compression_type,
                datamodule=datamodule,
                metric=metric,
                task=task,
                max_drop=max_drop,
                ov_kwargs=ov_kwargs,
                onnx_kwargs=onnx_kwargs,
            )

        if exporting():
            return run(export_root)
        return export_versioned(export_root, ExportType.OPENVINO, run)


__all__ = ["ONNX_DEFAULTS", "ONNX_OPSET", "VersionedExportMixin", "export_versioned", "exporting", "versioned_folder"]
