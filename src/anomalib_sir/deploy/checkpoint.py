"""Open a training checkpoint as ``Sir``, or say in one line why it cannot be.

Every ``anomalib-sir`` command that takes a ``.ckpt`` goes through :func:`load_sir_checkpoint`. Loading
another model's checkpoint with ``Sir.load_from_checkpoint`` fails deep inside Lightning (a state-dict
error hundreds of lines long, or ``invalid literal for int()`` when Padim's ``layers=["layer1", ...]``
meet Sir's integer layers); here the checkpoint is inspected first and the error names the model it
belongs to.

Lightning checkpoints do not record the model class. :func:`inspect_checkpoint` names it from the saved
hyper-parameters (the constructor arguments): the anomalib model whose constructor takes the most similar
set of arguments (Jaccard similarity), with the run folder anomalib writes (``results/<Model>/...``) as a
tie-breaker or fallback.

Example:
    >>> from anomalib_sir.deploy.checkpoint import load_sir_checkpoint
    >>> model = load_sir_checkpoint("results/Sir/MVTecAD/bottle/v0/weights/lightning/model.ckpt")  # doctest: +SKIP

"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError

if TYPE_CHECKING:
    from anomalib_sir import Sir

#: Constructor arguments every anomalib model has (not saved as hyper-parameters).
_COMPONENT_ARGUMENTS = frozenset({"self", "pre_processor", "post_processor", "evaluator", "visualizer"})

#: Below this similarity of argument names a checkpoint is not attributed to a model by its arguments.
MIN_SIMILARITY = 0.5

EXPORTED_SUFFIXES = frozenset({".xml", ".bin", ".onnx", ".pt"})


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself."""

    path: Path
    model_name: str | None
    """Class name of the model that wrote it (``"Sir"``, ``"Padim"``, ...); ``None``: not recognised."""
    hyper_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sir(self) -> bool:
        """Written by ``Sir``."""
        return self.model_name == "Sir"


def _model_classes() -> dict[str, type]:
    """Anomalib's models (``anomalib.models.__all__``) and ``Sir``, by class name."""
    import anomalib.models as models
    from anomalib.models import AnomalibModule

    from anomalib_sir import Sir

    classes = {
        name: getattr(models, name)
        for name in getattr(models, "__all__", ())
        if inspect.isclass(getattr(models, name, None))
        and issubclass(getattr(models, name), AnomalibModule)
        and getattr(models, name) is not AnomalibModule
    }
    classes["Sir"] = Sir
    return classes


def _arguments(cls: type) -> frozenset[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    named = (p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return frozenset(named) - _COMPONENT_ARGUMENTS


def guess_model_name(
    hyper_parameters: dict[str, Any], path: str | Path | None = None, classes: dict[str, type] | None = None
) -> str | None:
    """Name of the model whose constructor arguments best match ``hyper_parameters`` (``None``: no match).

    Ties (and checkpoints without hyper-parameters) are settled by a folder of ``path`` named like a model
    (anomalib writes ``results/<Model>/<dataset>/vN/weights/lightning/model.ckpt``).

    Example:
        >>> guess_model_name({"backbone": "resnet18", "layers": ["layer1"], "pre_trained": True, "n_features": 100})
        'Padim'
        >>> guess_model_name({}, "results/Patchcore/MVTecAD/bottle/v0/weights/lightning/model.ckpt")
        'Patchcore'

    """
    classes = classes if classes is not None else _model_classes()
    folders = {part.lower() for part in Path(path).parts[:-1]} if path is not None else set()
    hinted = [name for name in classes if name.lower() in folders]
    keys = frozenset(hyper_parameters) - _COMPONENT_ARGUMENTS
    if keys:
        scores = {}
        for name, cls in classes.items():
            arguments = _arguments(cls)
            scores[name] = len(keys & arguments) / len(keys | arguments)
        best = max(scores.values())
        if best >= MIN_SIMILARITY:
            tied = [name for name, score in scores.items() if score == best]
            if len(tied) == 1:
                return tied[0]
            hinted_tied = [name for name in tied if name in hinted]
            return hinted_tied[0] if len(hinted_tied) == 1 else None
    return hinted[0] if len(hinted) == 1 else None


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint's hyper-parameters (``torch.load`` with ``weights_only=True``) and name its model.

    Raises:
        CheckpointError: the file is missing, is an exported model, or is not a Lightning checkpoint.

    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "checkpoint not found"
        raise CheckpointError(
            f"{path}: {what}",
            fix="pass the model.ckpt anomalib wrote under results/<Model>/<dataset>/vN/weights/lightning/",
        )
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        raise CheckpointError(
            f"{path} is an exported model, not a training checkpoint",
            fix="pass the .ckpt written by `anomalib train --model Sir` (exported files go to `anomalib-sir predict`)",
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a PyTorch Lightning checkpoint ({_first_line(error)})",
            fix="pass the model.ckpt written by `anomalib train --model Sir`",
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a PyTorch Lightning checkpoint (no state_dict)",
            fix="pass the model.ckpt written by `anomalib train --model Sir`",
        )
    hyper_parameters = dict(checkpoint.get("hyper_parameters") or {})
    return CheckpointInfo(
        path=path, model_name=guess_model_name(hyper_parameters, path), hyper_parameters=hyper_parameters
    )


_QUOTED = re.compile(r'"([^"]+)"')


def _state_dict_summary(error: BaseException) -> str:
    """``"3 missing, 5 unexpected weights, e.g. model.x"`` from a ``load_state_dict`` error message."""
    text = str(error)
    counts = []
    example = None
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: (.*?)(?:\.\s*\n|\.\s*$)"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*\n|\.\s*$)"),
    ):
        match = re.search(pattern, text, flags=re.DOTALL)
        if match:
            keys = _QUOTED.findall(match.group(1))
            counts.append(f"{len(keys)} {label}")
            telling = [key for key in keys if key.startswith("model.")] or keys  # the network's own weights
            example = example or (telling[0] if telling else None)
    mismatched = len(re.findall(r"size mismatch for ", text))
    if mismatched:
        counts.append(f"{mismatched} of another shape")
    if not counts:
        return _first_line(error)
    return f"{', '.join(counts)} weights" + (f", e.g. {example}" if example else "")


def load_sir_checkpoint(path: str | Path, map_location: str = "cpu") -> Sir:
    """``Sir.load_from_checkpoint(path)`` in eval mode, after checking that ``path`` is a Sir checkpoint.

    Raises:
        CheckpointError: one line naming the file, what it is (e.g. ``"... is a Padim model checkpoint, not
            Sir"``) and what to do.

    """
    from anomalib_sir import Sir

    info = inspect_checkpoint(path)
    path = info.path
    if not info.is_sir:
        if info.model_name is None:
            keys = ", ".join(sorted(info.hyper_parameters)[:6]) or "none"
            raise CheckpointError(
                f"{path} is not a Sir checkpoint (hyper-parameters: {keys})",
                fix="pass a checkpoint written by `anomalib train --model Sir`",
            )
        raise CheckpointError(
            f"{path} is a {info.model_name} model checkpoint, not Sir",
            fix=f"use anomalib's own commands for it (e.g. `anomalib export --model {info.model_name} "
            f"--ckpt_path {path}`), or pass a checkpoint written by `anomalib train --model Sir`",
        )
    version_fix = "re-train with this version, or use the anomalib-sir version that wrote the checkpoint"
    try:
        model = Sir.load_from_checkpoint(path, map_location=map_location)
    except (TypeError, ValueError) as error:  # arguments or values this version's constructor rejects
        raise CheckpointError(
            f"{path} is a Sir checkpoint from another version of anomalib-sir ({_first_line(error)})", fix=version_fix
        ) from error
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        raise CheckpointError(
            f"{path}: its weights do not fit Sir as this version builds it ({_state_dict_summary(error)})",
            fix=version_fix,
        ) from error
    return model.eval()
