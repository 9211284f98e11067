"""One calling convention for a model in torch eager, OpenVINO and ONNX Runtime.

Every runtime takes a float32 ``(B, 3, H, W)`` batch of raw ``[0, 1]`` RGB images (any size: the
pre-processor is inside the model) and returns the model's outputs as numpy arrays keyed by name
(``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``). The parity check and the speed
benchmark compare runtimes through this interface.

* :class:`TorchRuntime` runs an ``AnomalibModule`` eagerly (``model.eval()(images)``).
* :class:`OpenVINORuntime` runs an OpenVINO IR (or ONNX) file with anomalib's ``OpenVINOInferencer``,
  in float32 unless told otherwise (:data:`DEFAULT_OPENVINO_PRECISION`).
* :class:`OnnxRuntime` runs an ``.onnx`` file with ``onnxruntime`` (CPU provider).

Example:
    >>> import numpy as np
    >>> from anomalib_sir import Sir
    >>> from anomalib_sir.deploy import TorchRuntime
    >>> runtime = TorchRuntime(Sir(image_size=(32, 32), width=16, loops=1, pre_trained=False))
    >>> outputs = runtime(np.random.default_rng(0).random((2, 3, 40, 48), dtype=np.float32))
    >>> outputs["anomaly_map"].shape, outputs["pred_score"].shape
    ((2, 1, 32, 32), (2,))

"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from anomalib.data import NumpyImageBatch
from anomalib.models import AnomalibModule


class Runtime(Protocol):
    """A callable model: ``(B, 3, H, W)`` float32 images in ``[0, 1]`` -> named numpy outputs."""

    name: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on a batch."""
        ...


def _as_batch(images: np.ndarray) -> np.ndarray:
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        msg = f"expected a (B, 3, H, W) batch, got shape {images.shape}"
        raise ValueError(msg)
    return images


class TorchRuntime:
    """Torch eager inference of an anomalib model (pre- and post-processing included).

    Args:
        model: the model; it is switched to eval mode.

    """

    name = "torch"

    def __init__(self, model: AnomalibModule) -> None:
        self.model = model.eval()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``model(images)`` without gradients."""
        with torch.inference_mode():
            output = self.model(torch.from_numpy(_as_batch(images)))
        return {k: v.cpu().numpy() for k, v in output._asdict().items() if isinstance(v, torch.Tensor)}


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Temporarily ``chdir`` (anomalib's inferencer creates its ``openvino_cache`` in the cwd)."""
    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def default_cache_dir() -> Path:
    """Where OpenVINO's compiled-model cache goes: ``$ANOMALIB_SIR_CACHE`` or ``~/.cache/anomalib_sir``."""
    return Path(os.environ.get("ANOMALIB_SIR_CACHE", Path.home() / ".cache" / "anomalib_sir")).expanduser()


DEFAULT_OPENVINO_PRECISION = "f32"
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` for SIR's exports unless the caller picks another.

OpenVINO's CPU plugin computes in bfloat16 by default on processors with bf16 units (AVX512-BF16,
AMX). bfloat16 keeps 8 bits of mantissa: on such a CPU SIR's anomaly maps moved by up to 0.31 and its
scores by up to 0.2 (decisions flipped), against below 1e-4 in float32. Exact parity with the trained
model is the default; ``precision="bf16"`` (or ``None``: the plugin's own choice) gives it up, for speed
where bf16 is faster (it was slower on an AVX512-BF16 CPU without AMX; measure with benchmarks/speed.py).
"""


def openvino_compile_config(
    config: dict[str, Any] | None = None, precision: str | None = DEFAULT_OPENVINO_PRECISION
) -> dict:
    """OpenVINO compile properties: ``config`` plus ``INFERENCE_PRECISION_HINT=precision``.

    A hint already in ``config`` wins; ``precision=None`` adds none (the plugin's default precision).

    Example:
        >>> openvino_compile_config({"PERFORMANCE_HINT": "LATENCY"})
        {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY'}
        >>> openvino_compile_config(precision=None)
        {}

    """
    hint = {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
    return {**hint, **(config or {})}


class OpenVINORuntime:
    """OpenVINO inference with anomalib's :class:`~anomalib.deploy.OpenVINOInferencer`.

    Args:
        path: ``model.xml`` (or ``.bin`` / ``.onnx``).
        device: OpenVINO device (``"CPU"``, ``"AUTO"``, ...).
        config: OpenVINO compile properties, e.g. ``{"PERFORMANCE_HINT": "LATENCY"}``.
        cache_dir: parent folder of the ``openvino_cache`` the inferencer creates (instead of the cwd).
        precision: ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``, ``"f16"``; ``None``: the plugin's
            default, bf16 on CPUs with bf16 units). Default float32, so the export matches the trained
            model (see :data:`DEFAULT_OPENVINO_PRECISION`); a hint in ``config`` wins.

    """

    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        config: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        precision: str | None = DEFAULT_OPENVINO_PRECISION,
    ) -> None:
        from anomalib.deploy import OpenVINOInferencer

        self.path = Path(path).resolve()
        compile_config = openvino_compile_config(config, precision)
        with _working_directory(Path(cache_dir) if cache_dir else default_cache_dir()):
            self.inferencer = OpenVINOInferencer(path=self.path, device=device, config=compile_config)

    def predict_batch(self, images: np.ndarray) -> NumpyImageBatch:
        """``OpenVINOInferencer.predict`` on the batch: anomalib's batch with the image and every output."""
        return self.inferencer.predict(_as_batch(images).copy())  # predict may rescale in place

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``OpenVINOInferencer.predict`` on the batch."""
        batch = self.predict_batch(images)
        names = [output.any_name for output in self.inferencer.model.outputs]
        return {name: np.asarray(getattr(batch, name)) for name in names if getattr(batch, name) is not None}


class OnnxRuntime:
    """ONNX Runtime inference on the CPU execution provider.

    Args:
        path: ``model.onnx``.
        threads: intra-op threads (``None``: onnxruntime's default, all cores).

    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a dev dependency
            msg = "ONNX Runtime inference needs `pip install onnxruntime`."
            raise ImportError(msg) from exc
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the session on the batch."""
        outputs = self.session.run(self.output_names, {self.input_name: _as_batch(images)})
        return dict(zip(self.output_names, outputs, strict=True))


def load_runtime(path: str | Path, **kwargs: Any) -> OpenVINORuntime | OnnxRuntime:
    """Open an exported model: ``.xml``/``.bin`` with OpenVINO, ``.onnx`` with ONNX Runtime.

    Keyword arguments go to the runtime's constructor.
    """
    suffix = Path(path).suffix.lower()
    if suffix in {".xml", ".bin"}:
        return OpenVINORuntime(path, **kwargs)
    if suffix == ".onnx":
        return OnnxRuntime(path, **kwargs)
    msg = f"unsupported exported model {path}: expected .xml, .bin or .onnx"
    raise ValueError(msg)
