"""Offline teacher weights: bundled checkpoint -> Hugging Face cache -> timm's pretrained path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from anomalib_sir import Sir
from anomalib_sir.teacher import (
    TeacherWeightsError,
    convert_bundled_checkpoint,
    create_teacher,
    teacher_normalization,
)


def test_bundled_checkpoint_maps_onto_timm() -> None:
    state_dict = convert_bundled_checkpoint("tf_efficientnet_lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert len(state_dict) == 296
    model.load_state_dict(state_dict)  # strict: every key and shape matches


def test_install_into_an_empty_cache_then_timm_loads_it_offline(tmp_path: Path) -> None:
    code = (
        "import timm, torch; from anomalib_sir.teacher import install_offline_teacher, convert_bundled_checkpoint;"
        "p = install_offline_teacher('tf_efficientnet_lite0'); print(p);"
        "m = timm.create_model('tf_efficientnet_lite0', pretrained=True);"
        "ref = convert_bundled_checkpoint('tf_efficientnet_lite0');"
        "print(all(torch.equal(v, ref[k]) for k, v in m.state_dict().items()))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    path, equal = result.stdout.split()
    assert Path(path).is_relative_to(tmp_path / "hub")
    assert equal == "True"


def test_existing_cache_entries_are_not_overwritten(tmp_path: Path) -> None:
    code = (
        "from anomalib_sir.teacher import install_offline_teacher; "
        "p = install_offline_teacher('tf_efficientnet_lite0'); print(p.stat().st_mtime_ns)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout == second.stdout


def test_user_supplied_weights_file_for_another_backbone(tmp_path: Path) -> None:
    reference = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    model = Sir(backbone="resnet18", backbone_weights=str(weights), image_size=(64, 64), width=16)
    loaded = model.model.teacher.state_dict()
    assert torch.equal(loaded["conv1.weight"], reference.state_dict()["conv1.weight"])
    assert model.pre_processor.transform.transforms[1].mean == list(teacher_normalization("resnet18")[0])


def test_missing_weights_file_is_named() -> None:
    with pytest.raises(FileNotFoundError, match=r"no_such_weights\.pth"):
        create_teacher("resnet18", (1, 2), weights="no_such_weights.pth")


def test_backbone_without_offline_weights_gives_an_actionable_error(tmp_path: Path) -> None:
    code = "from anomalib_sir.teacher import create_teacher; create_teacher('resnet18', (1, 2))"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert TeacherWeightsError.__name__ in result.stderr
    assert "backbone_weights" in result.stderr


def test_default_pre_processor_uses_teacher_normalisation() -> None:
    transform = Sir.configure_pre_processor((96, 80)).transform
    assert transform.transforms[0].size == [96, 80]
    assert transform.transforms[1].mean == [0.5, 0.5, 0.5]
    assert transform.transforms[1].std == [0.5, 0.5, 0.5]
