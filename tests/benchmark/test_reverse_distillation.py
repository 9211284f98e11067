"""Reverse Distillation extended to the EfficientNet-Lite0 teacher (anomalib's parts + channel adapters)."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.models.components.backbone.resnet_decoder import ResNetDecoder
from anomalib.models.image.reverse_distillation.components.bottleneck import OCBE
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

from anomalib_sir.benchmark.reverse_distillation import (
    EfficientNetReverseDistillation,
    EfficientNetReverseDistillationModel,
)


@pytest.fixture(scope="module")
def model() -> EfficientNetReverseDistillation:
    return EfficientNetReverseDistillation(image_size=(64, 64), pre_trained=False)


def test_uses_anomalibs_bottleneck_decoder_and_loss(model: EfficientNetReverseDistillation) -> None:
    assert isinstance(model.model.bottleneck.ocbe, OCBE)
    assert isinstance(model.model.decoder.decoder, ResNetDecoder)
    assert isinstance(model.loss, ReverseDistillationLoss)
    assert model.model.encoder.out_dims == [24, 40, 112]


def test_training_updates_only_bottleneck_and_decoder(model: EfficientNetReverseDistillation) -> None:
    images = model.pre_processor(torch.rand(2, 3, 64, 64))
    model.train()
    loss = model.training_step(ImageBatch(image=images, gt_label=torch.zeros(2, dtype=torch.long)))["loss"]
    loss.backward()
    assert loss.ndim == 0
    assert all(p.grad is None for p in model.model.encoder.parameters())
    optimised = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    adapters = [*model.model.bottleneck.adapters.parameters(), *model.model.decoder.heads.parameters()]
    assert all(id(p) in optimised for p in adapters)
    assert all(p.grad is not None for p in model.model.decoder.heads.parameters())


def test_inference_returns_score_and_full_size_map(model: EfficientNetReverseDistillation) -> None:
    model.eval()
    with torch.no_grad():
        output = model(torch.rand(3, 3, 64, 64))
    assert output.pred_score.numel() == 3  # anomalib's RD returns (B, 1)
    assert output.anomaly_map.shape == (3, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()


def test_rejects_stages_or_sizes_the_architecture_cannot_mirror() -> None:
    with pytest.raises(ValueError, match="strides"):
        EfficientNetReverseDistillationModel("tf_efficientnet_lite0", (64, 64), [1, 3, 4], pre_trained=False)
    with pytest.raises(ValueError, match="divisible by 32"):
        EfficientNetReverseDistillationModel("tf_efficientnet_lite0", (48, 48), [1, 2, 3], pre_trained=False)
