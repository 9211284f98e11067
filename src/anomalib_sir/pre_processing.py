"""Pre-processing that matches a timm teacher: resize, then normalise with the teacher's own mean/std.

:class:`TeacherPreProcessor` is anomalib's :class:`~anomalib.pre_processing.PreProcessor` with its transform
built from two arguments, so a YAML config can give any model (SIR, PatchCore, ...) exactly SIR's input
pipeline without spelling out the transform. :func:`normalization_of` reads the mean/std back from any
pre-processor's transform (used to undo the normalisation, e.g. for gamma augmentation).

Example:
    >>> from anomalib_sir.pre_processing import TeacherPreProcessor, normalization_of
    >>> pre_processor = TeacherPreProcessor(image_size=(64, 64), backbone="tf_efficientnet_lite0")
    >>> normalization_of(pre_processor)
    ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    In a config::

        pre_processor:
          class_path: anomalib_sir.pre_processing.TeacherPreProcessor
          init_args: {image_size: [128, 128], backbone: tf_efficientnet_lite0}

"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from anomalib.pre_processing import PreProcessor
from torchvision.transforms import v2

from anomalib_sir.teacher import teacher_normalization

#: Default input size of SIR and of the comparison models (chosen over 256 px on validation AUROC).
DEFAULT_IMAGE_SIZE: tuple[int, int] = (128, 128)


class TeacherPreProcessor(PreProcessor):
    """Resize to ``image_size`` and normalise with the mean/std the ``backbone``'s pretrained weights expect.

    The pre-processor is part of the exported graph, so exported models take raw ``[0, 1]`` images.

    Args:
        image_size: ``(height, width)`` after resizing.
        backbone: timm model name whose pretrained config gives the mean/std.

    """

    def __init__(
        self,
        image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
        backbone: str = "tf_efficientnet_lite0",
    ) -> None:
        size = tuple(int(s) for s in image_size)
        if len(size) != 2 or min(size) < 1:
            msg = f"image_size must be (height, width) with positive sides, got {tuple(image_size)}"
            raise ValueError(msg)
        mean, std = teacher_normalization(backbone)
        super().__init__(
            transform=v2.Compose(
                [v2.Resize(size, antialias=True), v2.Normalize(mean=list(mean), std=list(std))],
            ),
        )
        self.image_size = size
        self.backbone = backbone


def normalization_of(pre_processor: PreProcessor | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the last ``Normalize`` in ``pre_processor``'s transform; ``(0,), (1,)`` if it has none.

    Example:
        >>> normalization_of(None)
        ((0.0,), (1.0,))

    """
    normalizes = list(_normalizes(getattr(pre_processor, "transform", None)))
    if not normalizes:
        return (0.0,), (1.0,)
    last = normalizes[-1]
    return tuple(float(m) for m in last.mean), tuple(float(s) for s in last.std)


def _normalizes(transform: object) -> Iterator[v2.Normalize]:
    """Every ``Normalize`` inside ``transform`` (nested ``Compose``s included), in the order they are applied."""
    if isinstance(transform, v2.Normalize):
        yield transform
    for inner in getattr(transform, "transforms", []):
        yield from _normalizes(inner)
