"""Repair training: synthetic local anomalies on training views, reconstructed back to the clean view.

Each view is corrupted with probability ``probability`` in one box (``REPAIR_SIZE`` of the image side, per
axis): half of the time (``REPAIR_BLEND_SHARE``) the box is alpha-blended with a box of a *donor* view
(another training image: with several datasets in the batch, often another modality), otherwise its
contrast and brightness are shifted. The decoder is then trained to reconstruct the teacher features of
the **clean** view from the corrupted one, so it learns to map anomalous features back to normal ones (the
normality prior SIR relies on). Measured on five datasets: it helps a decoder trained on several datasets at
once and not one trained on a single reference image; the corruption's probability, box size and kind were
measured too (docs/ablations.md), hence :class:`~anomalib_sir.Sir`'s ``repair=None`` default.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> views = torch.zeros(4, 3, 32, 32)
    >>> corrupted = corrupt_views(views, donors=torch.ones(4, 3, 32, 32), probability=1.0)
    >>> tuple(corrupted.shape), bool((corrupted != 0).any()), bool((views == 0).all())
    ((4, 3, 32, 32), True, True)

"""

from __future__ import annotations

import torch

#: Box side as a fraction of the image side (drawn per axis).
REPAIR_SIZE: tuple[float, float] = (0.1, 0.4)
#: Blend weight of the donor's box.
REPAIR_ALPHA: tuple[float, float] = (0.3, 1.0)
#: Share of the corrupted boxes blended with a donor's box (the others are intensity-shifted).
REPAIR_BLEND_SHARE: float = 0.5
#: Contrast of an intensity-shifted box: gain ``1 ± REPAIR_GAIN`` around its mean, plus a bias in ``±0.5``.
REPAIR_GAIN: float = 0.5


def corrupt_views(views: torch.Tensor, donors: torch.Tensor, probability: float) -> torch.Tensor:
    """Return a copy of ``(B, C, H, W)`` views, each corrupted in one box with ``probability``."""
    out = views.clone()
    height, width = views.shape[-2:]
    for i in range(len(views)):
        if torch.rand(()) >= probability:
            continue
        side = torch.empty(2).uniform_(*REPAIR_SIZE)
        h, w = max(2, int(side[0] * height)), max(2, int(side[1] * width))
        top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
        box = out[i, :, top : top + h, left : left + w]
        if torch.rand(()) < REPAIR_BLEND_SHARE:
            alpha = float(torch.empty(()).uniform_(*REPAIR_ALPHA))
            donor_top, donor_left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
            box.mul_(1 - alpha).add_(alpha * donors[i, :, donor_top : donor_top + h, donor_left : donor_left + w])
        else:
            gain = float(torch.empty(()).uniform_(1 - REPAIR_GAIN, 1 + REPAIR_GAIN))
            mean = box.mean()
            box.sub_(mean).mul_(gain).add_(mean + float(torch.empty(()).uniform_(-0.5, 0.5)))
    return out
