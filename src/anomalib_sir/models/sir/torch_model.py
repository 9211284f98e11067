"""PyTorch model for SIR (Semantic Iterative Reconstruction).

A frozen pretrained teacher gives multi-scale features. They are fused into one semantic map on the grid of
the middle scale; a compact up-then-down block (spatially and channel-wise *expand*, then *contract*)
decodes it, and per-scale heads reconstruct every teacher scale. The block is applied for ``loops``
iterations with shared weights: each loop fuses the previous loop's reconstruction and refines it toward the
normal manifold. Anomalies are where the final reconstruction disagrees with the teacher; optionally a
nearest-neighbour distance to the training normals' teacher features is added (``knn_weight``).

Example:
    >>> import torch
    >>> from anomalib_sir.models.sir.torch_model import SirModel
    >>> model = SirModel(pre_trained=False, width=32, loops=2).eval()
    >>> output = model(torch.randn(1, 3, 64, 64))
    >>> tuple(output.anomaly_map.shape), tuple(output.pred_score.shape)
    ((1, 1, 64, 64), (1,))

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import DynamicBufferMixin
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from anomalib_sir.models.coreset import QuietKCenterGreedy
from anomalib_sir.teacher import create_teacher

from .anomaly_map import DEFAULT_TOPK_RATIO, Features, ScoreMode, SirAnomalyMapGenerator, Size
from .domains import (
    CORRECTION_CONTEXT,
    DomainBank,
    _resize,
    apply_corrections,
    domain_descriptor,
    fit_corrections,
    identity_corrections,
)

logger = logging.getLogger(__name__)

#: Default teacher stages: Lite0 features at strides 8 and 16 (chosen on validation AUROC, docs/ablations.md).
DEFAULT_LAYERS: tuple[int, ...] = (2, 3)
#: Std of a standardised input: about that of a typical image after a mean/std-0.5 normalisation.
STANDARDIZED_SPREAD: float = 0.5


class SirTrainOutput(NamedTuple):
    """What the model returns in training mode."""

    teacher_features: list[torch.Tensor]
    """One ``(B, C_s, H_s, W_s)`` tensor per teacher scale."""
    reconstructions: list[list[torch.Tensor]]
    """For each loop, the reconstruction of every teacher scale."""


class SirModel(DynamicBufferMixin, nn.Module):
    """SIR torch model: frozen teacher, scale fusion, looped up-then-down decoder, per-scale heads.

    Args:
        backbone, layers, pre_trained, backbone_weights: the timm teacher, its feature indices (shallow to
            deep), pretrained weights (offline, :mod:`anomalib_sir.teacher`) and an optional weights file.
        loops: refinement loops (shared weights), ``>= 1``.
        width: channels of the fused semantic map.
        noise_std: std of Gaussian noise on the first loop's fused map in training (against the identity).
        score_mode, topk_ratio: image score from the map, see :class:`SirAnomalyMapGenerator`.
        knn_weight: weight of the nearest-neighbour term: distance of each position's teacher features (fusion
            scale and deeper, 3x3-pooled) to a memory bank of training normals (:meth:`fit_memory_bank`); ``0``
            disables it. Both terms are divided by their mean on the normals (``map_scales``): unit-free.
        memory_bank_size: at most this many bank vectors (anomalib's k-center greedy core-set beyond it).

    """

    #: Channel expansion inside the up-then-down block.
    EXPANSION = 2
    #: Gaussian smoothing of the anomaly map (pixels).
    SIGMA = 4.0
    #: Standardise each pre-processed image (zero mean, std ``STANDARDIZED_SPREAD``) before the teacher, so
    #: exposure/contrast differences between scans do not read as anomalies (inside exported graphs).
    STANDARDIZE_INPUT = True

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = DEFAULT_LAYERS,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        loops: int = 3,
        width: int = 128,
        noise_std: float = 0.2,
        score_mode: ScoreMode = "topk",
        topk_ratio: float = DEFAULT_TOPK_RATIO,
        knn_weight: float = 0.0,
        memory_bank_size: int = 4096,
    ) -> None:
        super().__init__()
        checks = {"layers": bool(layers), "loops": loops >= 1, "width": width >= 1, "noise_std": noise_std >= 0}
        checks |= {"knn_weight": knn_weight >= 0, "memory_bank_size": memory_bank_size >= 1}
        if bad := [name for name, ok in checks.items() if not ok]:
            msg = f"invalid {', '.join(bad)}: need layers, loops/width/memory_bank_size >= 1, noise_std/knn_weight >= 0"
            raise ValueError(msg)
        self.layers = [int(i) for i in layers]
        self.loops = int(loops)
        self.noise_std = float(noise_std)
        self.knn_weight = float(knn_weight)
        self.memory_bank_size = int(memory_bank_size)
        self.fusion_scale = len(self.layers) // 2  # the fused map lives on the middle scale's grid

        self.teacher = create_teacher(backbone, self.layers, pre_trained=pre_trained, weights=backbone_weights)
        channels = list(self.teacher.feature_info.channels())
        self.fusion = ScaleFusion2d(channels, width)
        self.decoder = UpThenDownBlock(width, self.EXPANSION)
        self.heads = nn.ModuleList(ReconstructionHead(width, c) for c in channels)
        self.anomaly_map_generator = SirAnomalyMapGenerator(
            sigma=self.SIGMA, score_mode=score_mode, topk_ratio=topk_ratio
        )
        self.register_buffer("memory_bank", torch.empty(0, 0))
        # Mean reconstruction / nearest-neighbour map values on the training normals (used with knn_weight > 0).
        self.register_buffer("map_scales", torch.ones(2))
        self.domains = DomainBank(num_scales=len(self.layers))

    def train(self, mode: bool = True) -> SirModel:
        """Switch train/eval mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the student side (everything except the frozen teacher)."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.") and p.requires_grad]

    def forward(self, images: torch.Tensor, domain: torch.Tensor | None = None) -> SirTrainOutput | InferenceBatch:
        """Training: teacher features and all loops' reconstructions. Eval: anomaly map and score.

        With registered domains (:meth:`add_domain`) each image is scored against its domain: the one at
        ``domain[i]`` where that is ``>= 0``, else the nearest prototype; ``NaN`` score for an image that
        matches no domain (see :class:`~anomalib_sir.models.sir.domains.DomainBank`).
        """
        teacher_features = self.extract_features(images)
        reconstructions = self.reconstruct(teacher_features)
        if self.training:
            return SirTrainOutput(teacher_features, reconstructions)
        if not len(self.domains):
            anomaly_map = self.raw_anomaly_map(teacher_features, reconstructions[-1], images.shape[-2:])
            return InferenceBatch(pred_score=self.anomaly_map_generator.score(anomaly_map), anomaly_map=anomaly_map)
        index, distance = self.domains.route(domain_descriptor(teacher_features), domain)
        reconstruction = self.domains.correct(reconstructions[-1], index)
        anomaly_map = self.domains.normalize(
            self.raw_anomaly_map(teacher_features, reconstruction, images.shape[-2:]), index
        )
        score = self.domains.calibrate(self.anomaly_map_generator.score(anomaly_map), index, distance)
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)

    def raw_anomaly_map(self, teacher_features: Features, reconstruction: Features, image_size: Size) -> torch.Tensor:
        """Return the ``(B, 1, H, W)`` map before any domain normalisation (plus the kNN term if ``knn_weight > 0``)."""
        anomaly_map = self.anomaly_map_generator(teacher_features, reconstruction, image_size)
        if self.knn_weight > 0:
            knn_map = self.anomaly_map_generator.blur(_resize(self.knn_distance_maps(teacher_features), image_size))
            anomaly_map = anomaly_map / self.map_scales[0] + self.knn_weight * knn_map / self.map_scales[1]
        return anomaly_map

    # ------------------------------------------------------------------ domains (no gradient step)

    #: Images per chunk when a domain's views go through the teacher and the decoder.
    DOMAIN_BATCH_SIZE = 16
    #: An image is of no registered domain when it is farther than this (cosine distance between domain
    #: descriptors) from its nearest prototype, even where a domain's own views lie closer together. Chosen on
    #: the validation images of the five development datasets (docs/domains.md): their own domain's
    #: prototype is nearer than 0.07 for 95 % or more of them (fundus photographs: about 90 %), another
    #: dataset's prototype farther for about 80 %.
    UNKNOWN_DISTANCE = 0.07
    #: Cosine distance between domain descriptors is at most 2: the radius of a domain every image matches.
    ANY_IMAGE_RADIUS = 2.0

    @torch.no_grad()
    def add_domain(self, name: str, views: torch.Tensor, trained: bool = False, matches_all: bool = False) -> None:
        """Register domain ``name`` from ``(V, 3, H, W)`` pre-processed views of its reference normals.

        ``trained``: a domain the decoder was trained on (its own training normals): no correction of the
        reconstruction (the decoder fits it already), only the error statistics. ``matches_all``: no image is
        "unknown" to the domain (a model trained on one dataset scores every image).

        Example:
            >>> model = SirModel(pre_trained=False, width=8, loops=1).eval()
            >>> model.add_domain("ct", torch.rand(4, 3, 64, 64))
            >>> model.domains.names, bool(model(torch.rand(2, 3, 64, 64)).pred_score.isfinite().all())
            (['ct'], True)

        """
        was_training = self.training
        self.eval()
        with torch.inference_mode(False):
            features, reconstruction = self.features_and_reconstruction(views)
            self.domains.widen(CORRECTION_CONTEXT)  # an older checkpoint's per-position corrections, rewritten
            corrections = identity_corrections(features) if trained else fit_corrections(features, reconstruction)
            self.domains.add(
                name,
                domain_descriptor(features),
                corrections,
                self.raw_anomaly_map(features, apply_corrections(reconstruction, corrections), views.shape[-2:]),
                score=self.anomaly_map_generator.score,
                radius_floor=self.ANY_IMAGE_RADIUS if matches_all else self.UNKNOWN_DISTANCE,
            )
        self.train(was_training)

    @torch.no_grad()
    def features_and_reconstruction(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features and final-loop reconstruction of pre-processed images, per scale (in chunks).

        Example:
            >>> model = SirModel(pre_trained=False, width=8, loops=1).eval()
            >>> features, reconstruction = model.features_and_reconstruction(torch.rand(20, 3, 64, 64))
            >>> [tuple(f.shape) for f in features] == [tuple(r.shape) for r in reconstruction], len(features[0])
            (True, 20)

        """
        chunks = [self.extract_features(chunk) for chunk in images.split(self.DOMAIN_BATCH_SIZE)]
        reconstructions = [self.reconstruct(features)[-1] for features in chunks]
        return [torch.cat(s) for s in zip(*chunks, strict=True)], [
            torch.cat(s) for s in zip(*reconstructions, strict=True)
        ]

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features (no gradients) of ``images``, standardised first (``STANDARDIZE_INPUT``)."""
        with torch.no_grad():
            if self.STANDARDIZE_INPUT:
                images = standardize_images(images)
            return [f.float() for f in self.teacher(images)]

    def reconstruct(self, teacher_features: Features) -> list[list[torch.Tensor]]:
        """Run the refinement loops; return each loop's per-scale reconstruction."""
        sizes = [tuple(f.shape[-2:]) for f in teacher_features]
        current: Features = teacher_features
        outputs: list[list[torch.Tensor]] = []
        for loop in range(self.loops):
            fused = self.fusion(current, sizes[self.fusion_scale])
            if loop == 0 and self.training and self.noise_std > 0:
                fused = fused + self.noise_std * torch.randn_like(fused)
            decoded = self.decoder(fused)
            current = [head(decoded, size) for head, size in zip(self.heads, sizes, strict=True)]
            outputs.append(list(current))
        return outputs

    # ------------------------------------------------------------------ nearest-neighbour term (knn_weight > 0)

    def knn_embedding(self, teacher_features: Features) -> torch.Tensor:
        """``(B, D, h, w)`` 3x3-pooled features of the fusion scale and deeper, on the fusion grid."""
        size = teacher_features[self.fusion_scale].shape[-2:]
        pooled = [F.avg_pool2d(f, kernel_size=3, stride=1, padding=1) for f in teacher_features[self.fusion_scale :]]
        return torch.cat([_resize(p, size) for p in pooled], dim=1)

    def knn_distance_maps(self, teacher_features: Features) -> torch.Tensor:
        """``(B, 1, h, w)`` distance of every position to its nearest memory-bank vector."""
        if self.memory_bank.numel() == 0:
            msg = "knn_weight > 0 but the memory bank is empty: train the model or load a fitted checkpoint."
            raise RuntimeError(msg)
        embedding = self.knn_embedding(teacher_features)
        batch, dim, height, width = embedding.shape
        flat = embedding.permute(0, 2, 3, 1).reshape(-1, dim)
        distances = PatchcoreModel.euclidean_dist(flat, self.memory_bank).amin(dim=1)
        return distances.reshape(batch, 1, height, width)

    @torch.no_grad()
    def fit_memory_bank(self, images: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Build the memory bank and the nearest-neighbour scale ``map_scales[1]`` from pre-processed normals.

        Args:
            images: a ``(N, 3, H, W)`` tensor or a sequence of such batches (already normalised).

        Example:
            >>> model = SirModel(pre_trained=False, width=8, loops=1, knn_weight=1.0, memory_bank_size=20)
            >>> model.fit_memory_bank(torch.rand(2, 3, 64, 64))
            >>> tuple(model.memory_bank.shape), bool(model.map_scales[1] > 0)
            ((20, 112), True)

        """
        batches = [images] if isinstance(images, torch.Tensor) else list(images)
        embeddings = [self.knn_embedding(self.extract_features(batch)) for batch in batches]
        bank = torch.cat([e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]) for e in embeddings])
        if len(bank) > self.memory_bank_size:
            sampler = QuietKCenterGreedy(bank, sampling_ratio=self.memory_bank_size / len(bank))
            logger.info("kNN memory bank: k-center greedy core-set %d -> %d vectors", len(bank), sampler.coreset_size)
            bank = sampler.sample_coreset()
        self.memory_bank = _plain(bank.contiguous())
        # Typical nearest-neighbour distance: one random half of the bank to the other half.
        order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))
        half = max(1, len(bank) // 2)
        first, second = bank[order[:half]], bank[order[half:]]
        scale = PatchcoreModel.euclidean_dist(first, second).amin(dim=1).mean() if len(second) else torch.ones(())
        self.map_scales = _plain(torch.stack([self.map_scales[0], scale.clamp_min(1e-6).float()]))

    @torch.no_grad()
    def fit_reconstruction_scale(self, teacher_features: Sequence[Features], image_size: Size) -> None:
        """Set ``map_scales[0]`` to the mean reconstruction map of normals, from their teacher features.

        It depends on the decoder: fit it again after training (:class:`Sir` does, and before validation and
        checkpoints). ``teacher_features``: :meth:`extract_features` of batches of ``image_size`` normals.

        Example:
            >>> model = SirModel(pre_trained=False, width=8, loops=1)
            >>> model.fit_reconstruction_scale([model.extract_features(torch.rand(2, 3, 64, 64))], (64, 64))
            >>> bool(model.map_scales[0] > 0), float(model.map_scales[1])
            (True, 1.0)

        """
        was_training = self.training
        self.eval()
        means = [
            self.anomaly_map_generator(features, self.reconstruct(features)[-1], image_size).mean().reshape(1)
            for features in teacher_features
        ]
        self.map_scales = _plain(torch.stack([torch.cat(means).mean().clamp_min(1e-6).float(), self.map_scales[1]]))
        self.train(was_training)


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
            nn.Conv2d(width * len(in_channels), width, kernel_size=1, bias=False), _norm(width), nn.GELU()
        )

    def forward(self, features: Features, size: tuple[int, int]) -> torch.Tensor:
        """Fuse ``features`` onto a ``size`` grid."""
        resized = [_resize(proj(f), size) for proj, f in zip(self.projections, features, strict=True)]
        return self.merge(torch.cat(resized, dim=1))


class UpThenDownBlock(nn.Module):
    """Compact up-then-down residual block: expand, then contract, in channels *and* resolution.

    ``1x1`` expansion to ``width * expansion`` channels, a depthwise x2 transposed convolution (the "up"
    half), a stride-2 depthwise ``3x3`` back to the input grid and a ``1x1`` contraction (the "down" half),
    plus a residual connection. Depthwise spatial mixing keeps it cheap on CPU.

    Example:
        >>> import torch
        >>> block = UpThenDownBlock(width=16, expansion=2)
        >>> tuple(block.up(torch.randn(1, 16, 7, 9)).shape), tuple(block(torch.randn(1, 16, 7, 9)).shape)
        ((1, 32, 14, 18), (1, 16, 7, 9))

    """

    def __init__(self, width: int, expansion: int) -> None:
        super().__init__()
        hidden = width * expansion
        up = [nn.Conv2d(width, hidden, kernel_size=1, bias=False), _norm(hidden), nn.GELU()]
        up += [nn.ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2, groups=hidden, bias=False), _norm(hidden)]
        down = [nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1, groups=hidden, bias=False)]
        down += [_norm(hidden), nn.GELU(), nn.Conv2d(hidden, width, kernel_size=1, bias=False), _norm(width)]
        self.up, self.down, self.act = nn.Sequential(*up, nn.GELU()), nn.Sequential(*down), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block with a residual connection (the output keeps ``x``'s shape)."""
        return self.act(x + self.down(self.up(x)))


class ReconstructionHead(nn.Module):
    """Map the decoded semantic map back to one teacher scale (channels, then resolution).

    Channels are predicted on the (coarse) fusion grid; after bilinear resizing a depthwise ``3x3`` and a
    ``1x1`` refine the map at the teacher's resolution. Cheap even for stride-4 scales.
    """

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)
        depthwise = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, groups=out_channels)
        pointwise = nn.Conv2d(out_channels, out_channels, kernel_size=1)
        self.refine = nn.Sequential(_norm(out_channels), nn.GELU(), depthwise, pointwise)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Reconstruct a ``size``-sized feature map."""
        x = _resize(self.project(x), size)
        return x + self.refine(x)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Copy ``tensor`` as a normal tensor: buffers fitted in a validation hook (inference mode) stay exportable.

    Example:
        >>> with torch.inference_mode():
        ...     _plain(torch.ones(2)).is_inference()
        False

    """
    with torch.inference_mode(False):
        return tensor.clone()
