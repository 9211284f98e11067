"""``load_sir_checkpoint``: a Sir checkpoint loads; anything else is named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_sir.deploy import CheckpointError, inspect_checkpoint, load_sir_checkpoint
from anomalib_sir.deploy.checkpoint import _arguments, _model_classes, guess_model_name


def test_every_anomalib_model_is_recognised_by_its_arguments() -> None:
    classes = _model_classes()
    assert {"Sir", "Padim", "Patchcore", "ReverseDistillation"} <= set(classes)
    for name, cls in classes.items():
        assert guess_model_name(dict.fromkeys(_arguments(cls), 0), classes=classes) == name


def test_a_sir_checkpoint_loads(sir_checkpoint: Path) -> None:
    from anomalib_sir import Sir

    assert inspect_checkpoint(sir_checkpoint).is_sir
    model = load_sir_checkpoint(sir_checkpoint)
    assert isinstance(model, Sir)
    assert not model.training


def test_a_padim_checkpoint_is_named(padim_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        load_sir_checkpoint(padim_checkpoint)
    message = str(caught.value)
    assert message.startswith(f"{padim_checkpoint} is a Padim model checkpoint, not Sir; ")
    assert "\n" not in message


def test_a_checkpoint_of_another_sir_version_is_named(sir_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(sir_checkpoint, map_location="cpu", weights_only=True)
    older = tmp_path / "older.ckpt"
    checkpoint["hyper_parameters"]["expansion"] = 2  # an argument this version no longer has: ignored
    torch.save(checkpoint, older)
    assert load_sir_checkpoint(older).hparams["width"] == checkpoint["hyper_parameters"]["width"]
    checkpoint["hyper_parameters"]["score_mode"] = "no-such-mode"  # a value this version rejects
    torch.save(checkpoint, older)
    with pytest.raises(CheckpointError, match=r"is a Sir checkpoint from another version of anomalib-sir"):
        load_sir_checkpoint(older)
    checkpoint["hyper_parameters"].pop("score_mode")
    checkpoint["state_dict"]["model.extra.weight"] = torch.zeros(1)
    checkpoint["state_dict"].pop(next(k for k in checkpoint["state_dict"] if k.startswith("model.")))
    torch.save(checkpoint, older)
    with pytest.raises(CheckpointError, match=r"weights do not fit Sir .*1 missing, 1 unexpected weights"):
        load_sir_checkpoint(older)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.ckpt", b"not a checkpoint", "is not a PyTorch Lightning checkpoint"),
        ("model.xml", b"<xml/>", "is an exported model, not a training checkpoint"),
        ("missing.ckpt", None, "checkpoint not found"),
    ],
)
def test_files_that_are_not_checkpoints_are_named(
    name: str, content: bytes | None, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_sir_checkpoint(path)
    assert str(caught.value).startswith(str(path))
