"""Parity of exported models with torch eager: same anomaly maps and the same decisions.

For every exported runtime the check reports, against ``model.eval()(images)`` in torch:

* the largest absolute difference of the (normalised, post-processed) anomaly maps,
* the largest absolute difference of the (normalised) image scores,
* whether every image-level decision (``pred_label`` at the model's threshold) is identical, for every image
  whose torch score is farther than ``decision_margin`` (default ``1e-4``) from the threshold (a score that
  close may flip by float rounding alone; such images are counted as ``borderline`` and reported).

A runtime passes when the map difference is at most ``atol`` (default ``1e-3``) and all decisions match.

Example:
    >>> import numpy as np
    >>> from anomalib_sir import Sir
    >>> from anomalib_sir.deploy import TorchRuntime, check_parity, synthetic_images
    >>> model = Sir(image_size=(32, 32), width=16, loops=1, pre_trained=False)
    >>> report = check_parity(model, [TorchRuntime(model)], synthetic_images(2, (40, 48)))
    >>> report.passed, report.results[0].map_max_abs_diff
    (True, 0.0)

"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from anomalib.models import AnomalibModule

from .runtime import Runtime, TorchRuntime, load_runtime

DEFAULT_ATOL = 1e-3
DEFAULT_DECISION_MARGIN = 1e-4


@dataclass(frozen=True)
class RuntimeParity:
    """How far one runtime is from torch eager on the same images."""

    runtime: str
    """Runtime name (``openvino``, ``onnxruntime``, ...)."""
    model_path: str
    """The exported file that was run ("" for in-memory runtimes)."""
    num_images: int
    map_max_abs_diff: float
    """Largest absolute difference of the anomaly maps."""
    score_max_abs_diff: float
    """Largest absolute difference of the image scores."""
    decisions_match: bool
    """Every image-level decision is identical to torch's (borderline images excepted)."""
    num_anomalous: int
    """Images torch calls anomalous (to show both decisions were exercised)."""
    atol: float
    num_borderline: int = 0
    """Images whose torch score is within the decision margin of the threshold (not compared)."""

    @property
    def passed(self) -> bool:
        """Map within ``atol`` and identical decisions."""
        return self.map_max_abs_diff <= self.atol and self.decisions_match


@dataclass(frozen=True)
class ParityReport:
    """Parity of every runtime checked, with the model's (raw) image threshold."""

    results: tuple[RuntimeParity, ...]
    image_threshold: float

    @property
    def passed(self) -> bool:
        """All runtimes passed."""
        return all(result.passed for result in self.results)

    def to_rows(self) -> list[dict[str, object]]:
        """One dict per runtime (for CSV/JSON), including ``passed``."""
        return [{**asdict(result), "passed": result.passed} for result in self.results]

    def format_table(self) -> str:
        """Format the results as a Markdown table.

        Example:
            >>> row = RuntimeParity("openvino", "m.xml", 4, 2e-6, 1e-6, True, 2, 1e-3)
            >>> print(ParityReport((row,), 0.5).format_table().splitlines()[2])
            | openvino | 4 | 2.00e-06 | 1.00e-06 | yes (2 anomalous) | pass |

        """
        lines = [
            "| runtime | images | map max abs diff | score max abs diff | same decisions | result |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            decisions = f"{'yes' if r.decisions_match else 'NO'} ({r.num_anomalous} anomalous)"
            if r.num_borderline:
                decisions += f", {r.num_borderline} borderline"
            lines.append(
                f"| {r.runtime} | {r.num_images} | {r.map_max_abs_diff:.2e} | {r.score_max_abs_diff:.2e} "
                f"| {decisions} | {'pass' if r.passed else 'FAIL'} |"
            )
        return "\n".join(lines)


def synthetic_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth random RGB images ``(count, 3, H, W)`` in ``[0, 1]`` (parity needs inputs, not meaning).

    Example:
        >>> synthetic_images(2, (8, 12)).shape
        (2, 3, 8, 12)

    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(2, size[0] // 8), max(2, size[1] // 8), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    noise = 0.05 * torch.randn(count, 3, *size, generator=generator)
    return (smooth + noise).clamp(0, 1).numpy().astype(np.float32)


def _concat(outputs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(o[name]).reshape(len(o["pred_score"]), -1) for o in outputs])


def _compare(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    runtime: Runtime,
    atol: float,
    cut: float,
    decision_margin: float,
) -> RuntimeParity:
    ref_labels, labels = _concat(reference, "pred_label").ravel(), _concat(candidate, "pred_label").ravel()
    borderline = np.abs(_concat(reference, "pred_score").ravel() - cut) <= decision_margin
    compared = ~borderline
    return RuntimeParity(
        runtime=runtime.name,
        model_path=str(getattr(runtime, "path", "")),
        num_images=len(ref_labels),
        map_max_abs_diff=float(np.abs(_concat(reference, "anomaly_map") - _concat(candidate, "anomaly_map")).max()),
        score_max_abs_diff=float(np.abs(_concat(reference, "pred_score") - _concat(candidate, "pred_score")).max()),
        decisions_match=bool(np.array_equal(ref_labels.astype(bool)[compared], labels.astype(bool)[compared])),
        num_anomalous=int(ref_labels.astype(bool).sum()),
        atol=atol,
        num_borderline=int(borderline.sum()),
    )


def check_parity(
    model: AnomalibModule,
    runtimes: Iterable[Runtime | str | Path],
    images: np.ndarray | Sequence[np.ndarray],
    atol: float = DEFAULT_ATOL,
    decision_margin: float = DEFAULT_DECISION_MARGIN,
) -> ParityReport:
    """Compare each runtime (or exported file: ``.xml`` / ``.onnx``) with torch eager on ``images``.

    Args:
        model: the trained torch model that was exported.
        runtimes: runtimes, or paths of exported models opened with :func:`load_runtime`.
        images: one ``(B, 3, H, W)`` batch of ``[0, 1]`` images, or a sequence of such batches
            (sizes may differ between batches).
        atol: tolerance on the anomaly-map difference.
        decision_margin: images whose torch (normalised) score is this close to the threshold are not
            compared on their decision.

    """
    batches = [images] if isinstance(images, np.ndarray) else list(images)
    reference_runtime = TorchRuntime(model)
    reference = [reference_runtime(batch) for batch in batches]
    post_processor = getattr(model, "post_processor", None)
    cut = float(getattr(post_processor, "normalized_image_threshold", 0.5))
    results = []
    for item in runtimes:
        runtime = load_runtime(item) if isinstance(item, str | Path) else item
        candidate = [runtime(batch) for batch in batches]
        results.append(_compare(reference, candidate, runtime, atol, cut, decision_margin))
    threshold = getattr(post_processor, "image_threshold", torch.tensor(float("nan")))
    return ParityReport(results=tuple(results), image_threshold=float(threshold))
