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

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin, KCenterGreedy
from anomalib.models.components.sampling import k_center_greedy
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from anomalib_sir.allocator import limit_heap_fragmentation
from anomalib_sir.teacher import create_teacher

from .anomaly_map import DEFAULT_TOPK_RATIO, ScaleFusion, ScoreMode, SirAnomalyMapGenerator

logger = logging.getLogger(__name__)

#: Default teacher stages: Lite0 features at strides 8 and 16 (the stride-4 stage made the one-shot maps
#: noisier on validation; see the method README's ablation).
DEFAULT_LAYERS: tuple[int, ...] = (2, 3)
#: Std of a standardised input: about that of a typical image after a mean/std-0.5 normalisation.
STANDARDIZED_SPREAD: float = 0.5


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
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else proj(f)
            for proj, f in zip(self.projections, features, strict=True)
        ]
        return self.merge(torch.cat(resized, dim=1))


class UpThenDownBlock(nn.Module):
    """Compact up-then-down residual block: expand, then contract, in channels *and* resolution.

    ``1x1`` expansion to ``width * expansion`` channels, a depthwise ×2 transposed convolution
    (the "up" half), a stride-2 depthwise ``3x3`` back to the input grid and a ``1x1`` contraction
    (the "down" half), plus a residual connection. Depthwise spatial mixing keeps it cheap on CPU.

    Example:
        >>> import torch
        >>> block = UpThenDownBlock(width=16, expansion=2)
        >>> tuple(block.up(torch.randn(1, 16, 7, 9)).shape)
        (1, 32, 14, 18)
        >>> tuple(block(torch.randn(1, 16, 7, 9)).shape)
        (1, 16, 7, 9)

    """

    def __init__(self, width: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = width * expansion
        self.up = nn.Sequential(
            nn.Conv2d(width, hidden, kernel_size=1, bias=False),
            _norm(hidden),
            nn.GELU(),
            nn.ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2, groups=hidden, bias=False),
            _norm(hidden),
            nn.GELU(),
        )
        self.down = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1, groups=hidden, bias=False),
            _norm(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, width, kernel_size=1, bias=False),
            _norm(width),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block with a residual connection (the output keeps ``x``'s shape)."""
        return self.act(x + self.down(self.up(x)))


class ReconstructionHead(nn.Module):
    """Map the decoded semantic map back to one teacher scale (channels, then resolution).

    Channels are predicted on the (coarse) fusion grid; after bilinear resizing a depthwise ``3x3``
    and a ``1x1`` refine the map at the teacher's resolution. Cheap even for stride-4 scales.
    """

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)
        self.refine = nn.Sequential(
            _norm(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, groups=out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Reconstruct a ``size``-sized feature map."""
        x = self.project(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x + self.refine(x)


class SirModel(DynamicBufferMixin, nn.Module):
    """SIR torch model: frozen teacher, scale fusion, looped up-then-down decoder, per-scale heads.

    Args:
        backbone: timm backbone name of the teacher.
        layers: timm feature indices used as scales (shallow to deep).
        pre_trained: load pretrained teacher weights (offline; see :mod:`anomalib_sir.teacher`).
        backbone_weights: optional weights file for the teacher.
        loops: number of refinement loops, ``>= 1``.
        shared_loops: every loop applies the same decoder (the method's weight sharing); ``False`` gives each
            loop its own decoder blocks (the reconstruction heads stay shared).
        width: channels of the fused semantic map.
        expansion: channel expansion inside the up-then-down block.
        blocks: up-then-down blocks per loop.
        fusion_scale: index into ``layers`` whose grid the fused map lives on (``None``: the middle one).
        noise_std: std of Gaussian noise added to the fused map in training (keeps the decoder from
            learning the identity); ``0`` disables it.
        bottleneck_dropout: channel dropout on the fused map in training.
        bottleneck_pool: average-pool the fused map by this factor before the decoder (``1``: off). The
            decoder then works on a coarser grid and the heads resize back, so each position is rebuilt
            from its surroundings rather than from its own features alone (RD's bottleneck idea).
        sigma, scale_fusion, score_mode, topk_ratio: see :class:`SirAnomalyMapGenerator`.
        knn_weight: weight of a nearest-neighbour term: distance of each position's teacher features
            (fusion scale and deeper, 3x3-pooled) to a memory bank of the training normals' features,
            added to the reconstruction map. ``0`` (reconstruction only) disables it. Each term is
            divided by its typical value on the training normals, so the weight is unit-free.
        memory_bank_size: at most this many feature vectors are kept (anomalib's k-center greedy
            core-set when there are more).
        standardize_input: standardise each (pre-processed) image to zero mean and a fixed spread before the
            teacher, so scans with different exposure or contrast look alike to it (inside exported graphs;
            default on: chosen on validation AUROC, see the method README).

    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = DEFAULT_LAYERS,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        loops: int = 3,
        shared_loops: bool = True,
        width: int = 128,
        expansion: int = 2,
        blocks: int = 1,
        fusion_scale: int | None = None,
        noise_std: float = 0.2,
        bottleneck_dropout: float = 0.0,
        bottleneck_pool: int = 1,
        sigma: float = 4.0,
        scale_fusion: ScaleFusion = "mean",
        score_mode: ScoreMode = "topk",
        topk_ratio: float = DEFAULT_TOPK_RATIO,
        knn_weight: float = 0.0,
        memory_bank_size: int = 4096,
        standardize_input: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(
            memory_bank_size=memory_bank_size,
            loops=loops,
            width=width,
            expansion=expansion,
            blocks=blocks,
            bottleneck_pool=bottleneck_pool,
        )
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
        self.bottleneck_pool = int(bottleneck_pool)
        self.decoder = nn.Sequential(*(UpThenDownBlock(width, expansion) for _ in range(blocks)))
        self.shared_loops = bool(shared_loops)
        # Loops 2..n get their own blocks when the weights are not shared (empty otherwise).
        self.extra_decoders = nn.ModuleList(
            nn.Sequential(*(UpThenDownBlock(width, expansion) for _ in range(blocks)))
            for _ in range(0 if self.shared_loops else loops - 1)
        )
        self.heads = nn.ModuleList(ReconstructionHead(width, c) for c in channels)
        if knn_weight < 0:
            msg = f"knn_weight must be >= 0, got {knn_weight}"
            raise ValueError(msg)
        self.knn_weight = float(knn_weight)
        self.standardize_input = bool(standardize_input)
        self.memory_bank_size = int(memory_bank_size)
        self.register_buffer("memory_bank", torch.empty(0, 0))
        # Typical reconstruction / nearest-neighbour map values on the training normals.
        self.register_buffer("map_scales", torch.ones(2))
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
        """Teacher features (no gradients) for ``images`` (standardised first if ``standardize_input``)."""
        with torch.no_grad():
            if self.standardize_input:
                images = standardize_images(images)
            return [f.float() for f in self.teacher(images)]

    def reconstruct(self, teacher_features: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Run the refinement loops; return each loop's per-scale reconstruction."""
        sizes = [tuple(f.shape[-2:]) for f in teacher_features]
        fusion_size = sizes[self.fusion_scale]
        current: Sequence[torch.Tensor] = teacher_features
        outputs: list[list[torch.Tensor]] = []
        for loop in range(self.loops):
            fused = self.fusion(current, fusion_size)
            if self.bottleneck_pool > 1:
                fused = F.avg_pool2d(fused, self.bottleneck_pool, ceil_mode=True)
            if loop == 0 and self.training:
                if self.noise_std > 0:
                    fused = fused + self.noise_std * torch.randn_like(fused)
                fused = self.dropout(fused)
            decoder = self.decoder if loop == 0 or self.shared_loops else self.extra_decoders[loop - 1]
            decoded = decoder(fused)
            current = [head(decoded, size) for head, size in zip(self.heads, sizes, strict=True)]
            outputs.append(list(current))
        return outputs

    def knn_embedding(self, teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, D, h, w)`` locally pooled features of the fusion scale and deeper, on the fusion grid."""
        size = teacher_features[self.fusion_scale].shape[-2:]
        parts = []
        for feature in teacher_features[self.fusion_scale :]:
            pooled = F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)
            if pooled.shape[-2:] != size:
                pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
            parts.append(pooled)
        return torch.cat(parts, dim=1)

    def knn_distance_maps(self, teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, 1, h, w)`` distance of every position to its nearest memory-bank vector."""
        if self.memory_bank.numel() == 0:
            msg = "knn_weight > 0 but the memory bank is empty: call fit_memory_bank() on training normals first."
            raise RuntimeError(msg)
        embedding = self.knn_embedding(teacher_features)
        batch, dim, height, width = embedding.shape
        flat = embedding.permute(0, 2, 3, 1).reshape(-1, dim)
        distances = PatchcoreModel.euclidean_dist(flat, self.memory_bank).amin(dim=1)
        return distances.reshape(batch, 1, height, width)

    @torch.no_grad()
    def fit_memory_bank(self, images: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Build the nearest-neighbour memory bank and the map scales from pre-processed normal images.

        Args:
            images: a ``(N, 3, H, W)`` tensor or a sequence of such batches (already normalised).

        """
        batches = [images] if isinstance(images, torch.Tensor) else list(images)
        was_training = self.training
        self.eval()
        features = [self.extract_features(batch) for batch in batches]
        if self.knn_weight > 0:
            embeddings = [self.knn_embedding(f) for f in features]
            embedding = torch.cat([e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]) for e in embeddings])
            if len(embedding) > self.memory_bank_size:
                ratio = self.memory_bank_size / len(embedding)
                embedding = select_coreset(embedding, ratio)
            self.memory_bank = embedding.contiguous()
            # Typical nearest-neighbour distance: each training position to the bank without itself is
            # not available cheaply, so use the mean distance of one half of the bank to the other half.
            half = max(1, len(self.memory_bank) // 2)
            generator = torch.Generator().manual_seed(0)
            order = torch.randperm(len(self.memory_bank), generator=generator)
            first, second = self.memory_bank[order[:half]], self.memory_bank[order[half:]]
            if len(second):
                knn_scale = PatchcoreModel.euclidean_dist(first, second).amin(dim=1).mean()
            else:
                knn_scale = torch.ones(())
        else:
            knn_scale = torch.ones(())
        self.map_scales = torch.stack([self.map_scales[0], knn_scale.clamp_min(1e-6).float()])
        self._set_reconstruction_scale(batches, features)
        self.train(was_training)

    @torch.no_grad()
    def fit_reconstruction_scale(self, images: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Set the reconstruction term's scale to its mean map value on pre-processed normal ``images``.

        The scale depends on the decoder, so call it again whenever the decoder has changed (the Lightning
        module does so before validation and at the end of training); the nearest-neighbour scale depends
        only on the frozen teacher and is set once by :meth:`fit_memory_bank`.

        Example:
            >>> model = SirModel(pre_trained=False, width=8, loops=1)
            >>> model.fit_reconstruction_scale(torch.rand(2, 3, 64, 64))
            >>> bool(model.map_scales[0] > 0), float(model.map_scales[1])
            (True, 1.0)

        """
        batches = [images] if isinstance(images, torch.Tensor) else list(images)
        was_training = self.training
        self.eval()
        self._set_reconstruction_scale(batches, [self.extract_features(batch) for batch in batches])
        self.train(was_training)

    def _set_reconstruction_scale(
        self, batches: Sequence[torch.Tensor], features: Sequence[Sequence[torch.Tensor]]
    ) -> None:
        """Mean reconstruction map over ``batches`` (with their teacher ``features``) -> ``map_scales[0]``."""
        recon_means = []
        for batch, feature in zip(batches, features, strict=True):
            reconstruction = self.reconstruct(feature)[-1]
            recon_means.append(self.anomaly_map_generator(feature, reconstruction, batch.shape[-2:]).mean().reshape(1))
        recon_scale = torch.cat(recon_means).mean().clamp_min(1e-6).float()
        self.map_scales = torch.stack([recon_scale, self.map_scales[1]])

    def forward(self, images: torch.Tensor) -> SirTrainOutput | InferenceBatch:
        """Training: teacher features and all loops' reconstructions. Eval: anomaly map and score."""
        teacher_features = self.extract_features(images)
        reconstructions = self.reconstruct(teacher_features)
        if self.training:
            return SirTrainOutput(teacher_features, reconstructions)
        image_size = images.shape[-2:]
        anomaly_map = self.anomaly_map_generator(teacher_features, reconstructions[-1], image_size)
        if self.knn_weight > 0:
            knn_map = F.interpolate(
                self.knn_distance_maps(teacher_features),
                size=image_size,
                mode="bilinear",
                align_corners=False,
            )
            knn_map = self.anomaly_map_generator.blur(knn_map)
            anomaly_map = anomaly_map / self.map_scales[0] + self.knn_weight * knn_map / self.map_scales[1]
        return InferenceBatch(pred_score=self.anomaly_map_generator.score(anomaly_map), anomaly_map=anomaly_map)


def standardize_images(images: torch.Tensor, spread: float = STANDARDIZED_SPREAD) -> torch.Tensor:
    """Per image: subtract the mean and scale to std ``spread`` (over channels and pixels).

    Example:
        >>> out = standardize_images(torch.rand(2, 3, 8, 8) * 5 + 3)
        >>> [round(v, 3) for v in out.mean(dim=(1, 2, 3)).abs().tolist()], round(float(out[0].std()), 3)
        ([0.0, 0.0], 0.5)

    """
    flat = images.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (images - mean) / (std + 1e-6) * spread


def select_coreset(embedding: torch.Tensor, sampling_ratio: float) -> torch.Tensor:
    """Select the k-center greedy core-set of ``embedding`` (anomalib's sampler) without its tqdm bar.

    One log line replaces the sampler's per-iteration bar (under Lightning's Rich bar it also cost memory).
    Before sampling, :func:`~anomalib_sir.allocator.limit_heap_fragmentation` stops glibc from keeping the
    sampler's freed temporaries (without it a 150-image full-shot bank exhausted 24 GB in ``anomalib train``).

    Example:
        >>> select_coreset(torch.randn(100, 8), sampling_ratio=0.1).shape
        torch.Size([10, 8])

    """
    limit_heap_fragmentation()
    sampler = KCenterGreedy(embedding, sampling_ratio=sampling_ratio)
    logger.info("kNN memory bank: k-center greedy core-set of %d -> %d vectors", len(embedding), sampler.coreset_size)
    with mock.patch.object(k_center_greedy, "tqdm", functools.partial(k_center_greedy.tqdm, disable=True)):
        return sampler.sample_coreset()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            msg = f"{name} must be >= 1, got {value}"
            raise ValueError(msg)
