"""Anomaly map and image score for SIR.

Per scale, ``1 - cos(teacher, reconstruction)`` is upsampled to the input size; the scales are averaged and
Gaussian-smoothed with anomalib's :class:`GaussianBlur2d`. The image score is the map's maximum or the mean
of its top-k % pixels.

Example:
    >>> import torch
    >>> from anomalib_sir.models.sir.anomaly_map import SirAnomalyMapGenerator
    >>> generator = SirAnomalyMapGenerator(sigma=2.0)
    >>> teacher = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    >>> anomaly_map = generator(teacher, [t * 0.9 for t in teacher], image_size=(32, 32))
    >>> tuple(anomaly_map.shape), float(anomaly_map.abs().max()) < 1e-4
    ((2, 1, 32, 32), True)
    >>> generator.score(anomaly_map).shape
    torch.Size([2])

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn

from .loss import cosine_distance

ScoreMode = Literal["max", "topk"]
Features = Sequence[torch.Tensor]
Size = tuple[int, int] | torch.Size

#: Default fraction of the map's pixels averaged into the image score: top-40 %, chosen by the adoption rule on
#: five datasets (one-shot, validation; it beat 1-30 % and 50 %, the max and the mean: docs/ablations.md).
DEFAULT_TOPK_RATIO: float = 0.4


class SirAnomalyMapGenerator(nn.Module):
    """Turn teacher features and their reconstructions into an anomaly map and image scores.

    Args:
        sigma: standard deviation (pixels) of the Gaussian smoothing; ``0`` disables it.
        score_mode: ``"max"`` of the map, or ``"topk"`` mean of the highest ``topk_ratio`` pixels.
        topk_ratio: fraction of pixels averaged by ``"topk"`` (0 < ratio <= 1).

    """

    def __init__(
        self, sigma: float = 4.0, score_mode: ScoreMode = "topk", topk_ratio: float = DEFAULT_TOPK_RATIO
    ) -> None:
        super().__init__()
        checks = {"score_mode": score_mode in ("max", "topk"), "topk_ratio": 0 < topk_ratio <= 1, "sigma": sigma >= 0}
        if bad := [name for name, ok in checks.items() if not ok]:
            msg = f"invalid {', '.join(bad)}: need score_mode 'max' or 'topk', 0 < topk_ratio <= 1, sigma >= 0"
            raise ValueError(msg)
        self.sigma = float(sigma)
        self.score_mode = score_mode
        self.topk_ratio = topk_ratio
        kernel = 2 * int(4.0 * sigma + 0.5) + 1
        self.blur = GaussianBlur2d(sigma=self.sigma, channels=1, kernel_size=kernel) if sigma > 0 else nn.Identity()

    def forward(self, teacher_features: Features, reconstructions: Features, image_size: Size) -> torch.Tensor:
        """Return the fused, smoothed ``(B, 1, H, W)`` anomaly map."""
        return self.fuse(self.scale_maps(teacher_features, reconstructions, image_size))

    @staticmethod
    def scale_maps(teacher_features: Features, reconstructions: Features, image_size: Size) -> list[torch.Tensor]:
        """Per-scale ``1 - cos`` maps, each upsampled to ``(B, 1, *image_size)`` (before fusion)."""
        return [
            F.interpolate(
                cosine_distance(t, r).unsqueeze(1), size=tuple(image_size), mode="bilinear", align_corners=False
            )
            for t, r in zip(teacher_features, reconstructions, strict=True)
        ]

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Average same-sized per-scale maps and smooth the result."""
        return self.blur(torch.stack(list(maps), dim=0).mean(dim=0))

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image-level scores ``(B,)`` from ``(B, 1, H, W)`` maps."""
        flat = anomaly_map.flatten(1)
        if self.score_mode == "max":
            return flat.amax(dim=1)
        k = max(1, round(self.topk_ratio * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)
