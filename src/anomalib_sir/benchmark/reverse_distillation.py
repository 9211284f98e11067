"""Reverse Distillation with an EfficientNet (or any CNN) teacher, built from anomalib's own parts.

anomalib's :class:`~anomalib.models.ReverseDistillation` builds its decoder with
``anomalib.models.components.backbone.get_decoder(backbone)``, which only knows ResNet-family names, and its
bottleneck (:class:`~anomalib.models.image.reverse_distillation.components.bottleneck.OCBE`) assumes ResNet
channel widths (64/128/256 x block expansion). For a benchmark on the same offline teacher as SIR
(``tf_efficientnet_lite0``, stages with 24/40/112 channels at strides 4/8/16) this module adds **only the
missing channel adapters**; everything else is anomalib's code, unchanged:

* encoder: anomalib's :class:`~anomalib.models.components.TimmFeatureExtractor` (frozen, pretrained
  through timm's normal path, so the offline teacher installed by
  :func:`anomalib_sir.teacher.install_offline_teacher` is used);
* bottleneck: :class:`AdaptedOCBE` = learned 1x1 conv + BN per scale mapping the teacher's channels to
  the widths anomalib's ``OCBE(BasicBlock, 2)`` expects (64/128/256), then that unmodified OCBE;
* decoder: :class:`AdaptedResNetDecoder` = anomalib's unmodified ``ResNetDecoder(DecoderBasicBlock,
  [2, 2, 2, 2])`` (the de-ResNet-18 of RD) followed by a 1x1 conv per scale mapping 64/128/256 back to
  the teacher's channels;
* forward pass, anomaly map (``AnomalyMapGenerator``), loss (``ReverseDistillationLoss``), optimiser
  (Adam on bottleneck + decoder, as in anomalib) and trainer arguments: inherited unchanged.

The adapters are part of the trainable bottleneck/decoder (so anomalib's ``configure_optimizers`` trains
them); the teacher stays frozen. The teacher stages must have strides ``s, 2s, 4s`` like ResNet's
layer1-3 (EfficientNet-Lite feature indices ``1, 2, 3``: strides 4, 8, 16).

Example:
    >>> import torch
    >>> from anomalib_sir.benchmark.reverse_distillation import EfficientNetReverseDistillation
    >>> model = EfficientNetReverseDistillation(image_size=(64, 64), pre_trained=False)
    >>> model.model.encoder.out_dims
    [24, 40, 112]
    >>> _ = model.model.train()
    >>> encoder_features, decoder_features = model.model(torch.rand(2, 3, 64, 64))
    >>> [tuple(f.shape[1:]) for f in decoder_features] == [tuple(f.shape[1:]) for f in encoder_features]
    True

"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.metrics import Evaluator
from anomalib.models import ReverseDistillation
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
from anomalib.models.components.backbone.resnet_decoder import DecoderBasicBlock, ResNetDecoder
from anomalib.models.image.reverse_distillation.anomaly_map import (
    AnomalyMapGenerationMode,
    AnomalyMapGenerator,
)
from anomalib.models.image.reverse_distillation.components.bottleneck import OCBE
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn
from torchvision.models.resnet import BasicBlock

from anomalib_sir import Sir
from anomalib_sir.teacher import ensure_pretrained_available

#: Channel widths of anomalib's ``OCBE(BasicBlock, 2)`` inputs and of ``ResNetDecoder``'s outputs.
RESNET_WIDTHS: tuple[int, int, int] = (64, 128, 256)


def _projection(in_channels: int, out_channels: int, norm: bool) -> nn.Module:
    """1x1 convolution (+ BatchNorm), the only new layers of this RD variant."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=not norm)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if norm else conv


class AdaptedOCBE(nn.Module):
    """anomalib's one-class bottleneck embedding behind per-scale 1x1 channel adapters.

    Args:
        in_channels: channels of the three teacher stages (shallow to deep).

    Example:
        >>> import torch
        >>> bottleneck = AdaptedOCBE((24, 40, 112))
        >>> bottleneck([torch.rand(1, 24, 16, 16), torch.rand(1, 40, 8, 8), torch.rand(1, 112, 4, 4)]).shape
        torch.Size([1, 512, 2, 2])

    """

    def __init__(self, in_channels: Sequence[int]) -> None:
        super().__init__()
        if len(in_channels) != len(RESNET_WIDTHS):
            msg = f"Reverse Distillation needs exactly 3 teacher stages, got {len(in_channels)}."
            raise ValueError(msg)
        self.adapters = nn.ModuleList(
            _projection(c, w, norm=True) for c, w in zip(in_channels, RESNET_WIDTHS, strict=True)
        )
        self.ocbe = OCBE(BasicBlock, 2)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Project each scale to ResNet widths and embed them with anomalib's OCBE."""
        return self.ocbe([adapter(f) for adapter, f in zip(self.adapters, features, strict=True)])


class AdaptedResNetDecoder(nn.Module):
    """anomalib's de-ResNet-18 decoder followed by per-scale 1x1 heads back to the teacher's channels.

    Args:
        out_channels: channels of the three teacher stages (shallow to deep).

    Example:
        >>> import torch
        >>> decoder = AdaptedResNetDecoder((24, 40, 112))
        >>> [tuple(f.shape) for f in decoder(torch.rand(1, 512, 2, 2))]
        [(1, 24, 16, 16), (1, 40, 8, 8), (1, 112, 4, 4)]

    """

    def __init__(self, out_channels: Sequence[int]) -> None:
        super().__init__()
        if len(out_channels) != len(RESNET_WIDTHS):
            msg = f"Reverse Distillation needs exactly 3 teacher stages, got {len(out_channels)}."
            raise ValueError(msg)
        self.decoder = ResNetDecoder(DecoderBasicBlock, [2, 2, 2, 2])
        self.heads = nn.ModuleList(
            _projection(w, c, norm=False) for w, c in zip(RESNET_WIDTHS, out_channels, strict=True)
        )

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Decode the embedding (shallow-to-deep order, as anomalib's decoder returns them)."""
        return [head(f) for head, f in zip(self.heads, self.decoder(embedding), strict=True)]


class EfficientNetReverseDistillationModel(ReverseDistillationModel):
    """:class:`ReverseDistillationModel` whose bottleneck/decoder fit any 3-stage timm CNN teacher.

    The parent's constructor is not called because it builds the ResNet-only decoder; this constructor
    sets the same four attributes (``tiler``, ``encoder``, ``bottleneck``, ``decoder``,
    ``anomaly_map_generator``) and the parent's ``forward`` is used as is.

    Args:
        backbone: timm CNN name.
        input_size: (height, width) of the pre-processed images (anomaly-map size).
        layers: three timm feature indices (or module names) with strides ``s, 2s, 4s``.
        anomaly_map_mode: ``"add"`` or ``"multiply"`` the per-scale maps.
        pre_trained: load the backbone's pretrained weights through timm.

    Raises:
        ValueError: when the stages are not three, their strides do not double, or the input size is not a
            multiple of the bottleneck stride (32 for Lite0 and ResNets).

    """

    def __init__(
        self,
        backbone: str,
        input_size: tuple[int, int],
        layers: Sequence[str | int],
        anomaly_map_mode: AnomalyMapGenerationMode = AnomalyMapGenerationMode.ADD,
        pre_trained: bool = True,
    ) -> None:
        nn.Module.__init__(self)
        self.tiler = None
        if pre_trained:
            ensure_pretrained_available(backbone)
        self.encoder = TimmFeatureExtractor(backbone=backbone, pre_trained=pre_trained, layers=list(layers))
        channels = list(self.encoder.out_dims)
        reductions = list(self.encoder.reductions)
        if len(channels) != 3 or reductions[1] != 2 * reductions[0] or reductions[2] != 2 * reductions[1]:
            msg = (
                f"Reverse Distillation needs 3 teacher stages with strides s, 2s, 4s; {backbone} layers "
                f"{list(layers)} have strides {reductions}."
            )
            raise ValueError(msg)
        stride = 8 * reductions[0]  # OCBE halves the deepest scale once more; the decoder doubles back
        if any(side % stride for side in input_size):
            msg = f"Reverse Distillation needs an input size divisible by {stride}, got {tuple(input_size)}."
            raise ValueError(msg)
        self.bottleneck = AdaptedOCBE(channels)
        self.decoder = AdaptedResNetDecoder(channels)
        self.anomaly_map_generator = AnomalyMapGenerator(image_size=tuple(input_size), mode=anomaly_map_mode)


class EfficientNetReverseDistillation(ReverseDistillation):
    """anomalib's Reverse Distillation Lightning module with an EfficientNet-Lite (any 3-stage CNN) teacher.

    Training, validation, optimiser, loss and trainer arguments are those of
    :class:`~anomalib.models.ReverseDistillation`; only the torch model is
    :class:`EfficientNetReverseDistillationModel`. The default pre-processor resizes to ``image_size`` and
    normalises with the teacher's own mean/std (as SIR does).

    Args:
        backbone: timm teacher (default: the offline ``tf_efficientnet_lite0``).
        layers: three feature indices with strides ``s, 2s, 4s`` (Lite0: ``1, 2, 3``).
        anomaly_map_mode: ``"add"`` or ``"multiply"``.
        pre_trained: pretrained teacher (offline through the Hugging Face cache).
        image_size: size used by the default pre-processor.
        pre_processor, post_processor, evaluator, visualizer: anomalib components (``True``: defaults).

    Example:
        >>> model = EfficientNetReverseDistillation(image_size=(64, 64), pre_trained=False)
        >>> model.input_size
        torch.Size([64, 64])

    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str | int] = (1, 2, 3),
        anomaly_map_mode: AnomalyMapGenerationMode | str = AnomalyMapGenerationMode.ADD,
        pre_trained: bool = True,
        image_size: tuple[int, int] = (256, 256),
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(tuple(image_size), backbone)
        # ReverseDistillation.__init__ would build the ResNet-only model: initialise its base instead.
        AnomalibModule.__init__(
            self,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if self.input_size is None:
            msg = "Input size is required for Reverse Distillation model."
            raise ValueError(msg)
        self.backbone = backbone
        self.pre_trained = pre_trained
        self.layers = list(layers)
        self.anomaly_map_mode = AnomalyMapGenerationMode(anomaly_map_mode)
        self.model = EfficientNetReverseDistillationModel(
            backbone=backbone,
            input_size=tuple(self.input_size),
            layers=self.layers,
            anomaly_map_mode=self.anomaly_map_mode,
            pre_trained=pre_trained,
        )
        self.loss = ReverseDistillationLoss()

    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        backbone: str = "tf_efficientnet_lite0",
    ) -> PreProcessor:
        """Resize and normalise with the teacher's mean/std (same as :meth:`anomalib_sir.Sir.configure_pre_processor`).

        Example:
            >>> EfficientNetReverseDistillation.configure_pre_processor((32, 32)).transform.transforms[1].std
            [0.5, 0.5, 0.5]

        """
        return Sir.configure_pre_processor(image_size, backbone)
