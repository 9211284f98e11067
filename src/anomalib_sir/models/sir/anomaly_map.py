"""Anomaly map and image score for SIR.

Per scale, ``1 - cos(teacher, reconstruction)`` is upsampled to the input size; the scales are fused
(mean or product) and Gaussian-smoothed with anomalib's :class:`GaussianBlur2d`. The image score is the
map's maximum or the mean of its top-k % pixels.

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

ScaleFusion = Literal["mean", "product"]
ScoreMode = Literal["max", "topk"]

#: Default fraction of the map's pixels averaged into the image score (chosen on validation AUROC: a
#: top-20 % mean balances local lesions against diffuse ones; see the method README's ablation).
DEFAULT_TOPK_RATIO: float = 0.2


class SirAnomalyMapGenerator(nn.Module):
    """Turn teacher features and their reconstructions into an anomaly map and image scores.

    Args:
        sigma: standard deviation (pixels) of the Gaussian smoothing; ``0`` disables it.
        scale_fusion: how per-scale maps are combined, ``"mean"`` or ``"product"`` (geometric).
        score_mode: ``"max"`` of the map, or ``"topk"`` mean of the highest ``topk_ratio`` pixels.
        topk_ratio: fraction of pixels averaged by ``"topk"`` (0 < ratio <= 1).

    """

    def __init__(
        self,
        sigma: float = 4.0,
        scale_fusion: ScaleFusion = "mean",
        score_mode: ScoreMode = "topk",
        topk_ratio: float = DEFAULT_TOPK_RATIO,
    ) -> None:
        super().__init__()
        if scale_fusion not in {"mean", "product"}:
            msg = f"scale_fusion must be 'mean' or 'product', got {scale_fusion!r}"
            raise ValueError(msg)
        if score_mode not in {"max", "topk"}:
            msg = f"score_mode must be 'max' or 'topk', got {score_mode!r}"
            raise ValueError(msg)
        if not 0.0 < topk_ratio <= 1.0:
            msg = f"topk_ratio must be in (0, 1], got {topk_ratio}"
            raise ValueError(msg)
        if sigma < 0:
            msg = f"sigma must be >= 0, got {sigma}"
            raise ValueError(msg)
        self.sigma = float(sigma)
        self.scale_fusion = scale_fusion
        self.score_mode = score_mode
        self.topk_ratio = topk_ratio
        self.blur = (
            GaussianBlur2d(sigma=float(sigma), channels=1, kernel_size=2 * int(4.0 * sigma + 0.5) + 1)
            if sigma > 0
            else nn.Identity()
        )

    def forward(
        self,
        teacher_features: Sequence[torch.Tensor],
        reconstructions: Sequence[torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Return the fused, smoothed ``(B, 1, H, W)`` anomaly map."""
        return self.fuse(self.scale_maps(teacher_features, reconstructions, image_size))

    @staticmethod
    def scale_maps(
        teacher_features: Sequence[torch.Tensor],
        reconstructions: Sequence[torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> list[torch.Tensor]:
        """Per-scale ``1 - cos`` maps, each upsampled to ``(B, 1, *image_size)`` (before fusion)."""
        return [
            F.interpolate(
                cosine_distance(t, r).unsqueeze(1),
                size=tuple(image_size),
                mode="bilinear",
                align_corners=False,
            )
            for t, r in zip(teacher_features, reconstructions, strict=True)
        ]

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse same-sized per-scale maps (mean or geometric mean) and smooth the result."""
        stacked = torch.stack(list(maps), dim=0)
        geometric = self.scale_fusion == "product"
        fused = stacked.clamp_min(1e-8).log().mean(dim=0).exp() if geometric else stacked.mean(dim=0)
        return self.blur(fused)

    def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Image-level scores ``(B,)`` from ``(B, 1, H, W)`` maps."""
        flat = anomaly_map.flatten(1)
        if self.score_mode == "max":
            return flat.amax(dim=1)
        k = max(1, round(self.topk_ratio * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)
