"""TeacherPreProcessor: SIR's input pipeline as a configurable anomalib PreProcessor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from jsonargparse import ArgumentParser
from torchvision.transforms import v2

from anomalib_sir import Sir
from anomalib_sir.pre_processing import TeacherPreProcessor, normalization_of

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_teacher_pre_processor_resizes_and_normalises_like_the_teacher() -> None:
    pre_processor = TeacherPreProcessor(image_size=(48, 40), backbone="resnet18")
    out = pre_processor(torch.full((1, 3, 96, 80), 0.5))
    assert out.shape == (1, 3, 48, 40)
    mean, std = normalization_of(pre_processor)
    assert mean == pytest.approx((0.485, 0.456, 0.406))
    expected = (0.5 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-5)


@pytest.mark.parametrize("size", [(0, 32), (32,), (32, 32, 3)])
def test_teacher_pre_processor_refuses_bad_sizes(size: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="image_size must be"):
        TeacherPreProcessor(image_size=size)


def test_normalization_of_finds_nested_normalize_or_reports_identity() -> None:
    nested = PreProcessor(
        transform=v2.Compose([v2.Resize((8, 8)), v2.Compose([v2.Normalize(mean=[0.2], std=[0.4])])]),
    )
    assert normalization_of(nested) == ((0.2,), (0.4,))
    assert normalization_of(PreProcessor(transform=v2.Resize((8, 8)))) == ((0.0,), (1.0,))


def test_patchcore_comparison_config_gets_sirs_input_pipeline() -> None:
    section = yaml.safe_load((CONFIGS / "compare" / "patchcore.yaml").read_text())["model"]
    section["init_args"]["pre_trained"] = False  # no teacher weights needed to check the pipeline
    parser = ArgumentParser()
    parser.add_subclass_arguments(AnomalibModule, "model", required=True, fail_untyped=False)
    model = parser.instantiate_classes(parser.parse_object({"model": section}))["model"]
    images = torch.rand(2, 3, 200, 160)
    assert isinstance(model.pre_processor, TeacherPreProcessor)
    assert torch.equal(model.pre_processor(images), Sir.configure_pre_processor((128, 128))(images))
