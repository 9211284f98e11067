"""PyTorch model for SIR (Semantic Iterative Reconstruction).

A frozen pretrained teacher gives multi-scale features. They are fused into one semantic map at a
chosen scale; a compact up-then-down block (spatially and channel-wise *expand*, then *contract*)
decodes it, and per-scale heads reconstruct every teacher scale. The block is applied for ``loops``
iterations with shared weights: each loop fuses the previous loop's reconstruction and refines it
toward the normal manifold. Anomalies are where the final reconstruction disagrees with the teacher.

Example:
    >>> import torch
    >>> from anomalib_sir.models.sir.torch_model import SirModel
    >>> model = SirModel(pre_trained=False, width=32, loops=2).eval()
    >>> output = model(torch.randn(1, 3, 64, 64))
    >>> tuple(output.anomaly_map.shape), tuple(output.pred_score.shape)
    ((1, 1, 64, 64), (1,))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_sir.teacher import create_teacher

from .anomaly_map import ScaleFusion, ScoreMode, SirAnomalyMapGenerator


class SirTrainOutput(NamedTuple):
    """What the model returns in training mode."""

    teacher_features: list[torch.Tensor]
    """One ``(B, C_s, H_s, W_s)`` tensor per teacher scale."""
    reconstructions: list[list[torch.Tensor]]
    """For each loop, the reconstruction of every teacher scale."""


def _norm(channels: int) -> nn.GroupNorm:
    """Batch-size independent normalisation (one-shot batches can be a single image)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ScaleFusion2d(nn.Module):
    """Project each scale to ``width`` channels, resize to the fusion grid and merge into one map."""

    def __init__(self, in_channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1, bias=False) for c in in_channels)
        self.merge = nn.Sequential(
            nn.Conv2d(width * len(in_channels), width, kernel_size=1, bias=False),
            _norm(width),
            nn.GELU(),
        )

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Fuse ``features`` onto a ``size`` grid."""
        resized = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            if f.shape[-2:] != size
            else proj(f)
            for proj, f in zip(self.projections, features, strict=True)
        ]
        return self.merge(torch.cat(resized, dim=1))


class UpThenDownBlock(nn.Module):
    """Compact up-then-down residual block: expand (×2 resolution, ×``expansion`` channels), then contract.

    Example:
        >>> import torch
        >>> block = UpThenDownBlock(width=16, expansion=2)
        >>> tuple(block(torch.randn(1, 16, 7, 9)).shape)
        (1, 16, 7, 9)
    """

    def __init__(self, width: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = width * expansion
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, hidden, kernel_size=2, stride=2, bias=False),
            _norm(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden, bias=False),
            _norm(hidden),
            nn.GELU(),
        )
        self.down = nn.Sequential(
            nn.Conv2d(hidden, width, kernel_size=3, stride=2, padding=1, bias=False),
            _norm(width),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block with a residual connection (the output keeps ``x``'s shape)."""
        out = self.down(self.up(x))
        if out.shape[-2:] != x.shape[-2:]:  # odd sizes: transposed conv + stride-2 conv may differ by one
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.act(x + out)


class ReconstructionHead(nn.Module):
    """Map the decoded semantic map back to one teacher scale (channels and resolution)."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
            _norm(width),
            nn.GELU(),
            nn.Conv2d(width, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Reconstruct a ``size``-sized feature map."""
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.body(x)


class SirModel(nn.Module):
    """SIR torch model: frozen teacher, scale fusion, looped up-then-down decoder, per-scale heads.

    Args:
        backbone: timm backbone name of the teacher.
        layers: timm feature indices used as scales (shallow to deep).
        pre_trained: load pretrained teacher weights (offline; see :mod:`anomalib_sir.teacher`).
        backbone_weights: optional weights file for the teacher.
        loops: number of refinement loops (shared weights), ``>= 1``.
        width: channels of the fused semantic map.
        expansion: channel expansion inside the up-then-down block.
        blocks: up-then-down blocks per loop.
        fusion_scale: index into ``layers`` whose grid the fused map lives on (``None``: the middle one).
        noise_std: std of Gaussian noise added to the fused map in training (keeps the decoder from
            learning the identity); ``0`` disables it.
        bottleneck_dropout: channel dropout on the fused map in training.
        sigma, scale_fusion, score_mode, topk_ratio: see :class:`SirAnomalyMapGenerator`.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        loops: int = 3,
        width: int = 128,
        expansion: int = 2,
        blocks: int = 1,
        fusion_scale: int | None = None,
        noise_std: float = 0.2,
        bottleneck_dropout: float = 0.0,
        sigma: float = 4.0,
        scale_fusion: ScaleFusion = "mean",
        score_mode: ScoreMode = "topk",
        topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        _check_positive(loops=loops, width=width, expansion=expansion, blocks=blocks)
        if not layers:
            msg = "layers must name at least one teacher feature index"
            raise ValueError(msg)
        if noise_std < 0 or not 0.0 <= bottleneck_dropout < 1.0:
            msg = f"noise_std must be >= 0 and bottleneck_dropout in [0, 1); got {noise_std}, {bottleneck_dropout}"
            raise ValueError(msg)
        self.layers = [int(i) for i in layers]
        self.loops = loops
        self.noise_std = noise_std
        self.fusion_scale = len(self.layers) // 2 if fusion_scale is None else fusion_scale
        if not 0 <= self.fusion_scale < len(self.layers):
            msg = f"fusion_scale must index layers {self.layers}, got {fusion_scale}"
            raise ValueError(msg)

        self.teacher = create_teacher(backbone, self.layers, pre_trained=pre_trained, weights=backbone_weights)
        channels = list(self.teacher.feature_info.channels())
        self.fusion = ScaleFusion2d(channels, width)
        self.dropout = nn.Dropout2d(bottleneck_dropout) if bottleneck_dropout > 0 else nn.Identity()
        self.decoder = nn.Sequential(*(UpThenDownBlock(width, expansion) for _ in range(blocks)))
        self.heads = nn.ModuleList(ReconstructionHead(width, c) for c in channels)
        self.anomaly_map_generator = SirAnomalyMapGenerator(
            sigma=sigma, scale_fusion=scale_fusion, score_mode=score_mode, topk_ratio=topk_ratio
        )

    def train(self, mode: bool = True) -> SirModel:
        """Switch train/eval mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the student side (everything except the frozen teacher)."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.") and p.requires_grad]

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features (no gradients) for ``images``."""
        with torch.no_grad():
            return [f.float() for f in self.teacher(images)]

    def reconstruct(self, teacher_features: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Run the refinement loops; return each loop's per-scale reconstruction."""
        sizes = [tuple(f.shape[-2:]) for f in teacher_features]
        fusion_size = sizes[self.fusion_scale]
        current: Sequence[torch.Tensor] = teacher_features
        outputs: list[list[torch.Tensor]] = []
        for loop in range(self.loops):
            fused = self.fusion(current, fusion_size)
            if loop == 0 and self.training:
                if self.noise_std > 0:
                    fused = fused + self.noise_std * torch.randn_like(fused)
                fused = self.dropout(fused)
            decoded = self.decoder(fused)
            current = [head(decoded, size) for head, size in zip(self.heads, sizes, strict=True)]
            outputs.append(list(current))
        return outputs

    def forward(self, images: torch.Tensor) -> SirTrainOutput | InferenceBatch:
        """Training: teacher features and all loops' reconstructions. Eval: anomaly map and score."""
        teacher_features = self.extract_features(images)
        reconstructions = self.reconstruct(teacher_features)
        if self.training:
            return SirTrainOutput(teacher_features, reconstructions)
        anomaly_map = self.anomaly_map_generator(teacher_features, reconstructions[-1], images.shape[-2:])
        return InferenceBatch(pred_score=self.anomaly_map_generator.score(anomaly_map), anomaly_map=anomaly_map)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            msg = f"{name} must be >= 1, got {value}"
            raise ValueError(msg)
