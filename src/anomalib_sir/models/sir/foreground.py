"""Foreground mask computed from the image itself, for scoring only inside the imaged anatomy.

CT, MRI, X-ray, ultrasound and fundus images have a dark background (air, the outside of the scan fan or
of the fundus circle). A score pooled over the whole map then mixes in borders and air. The background is
the smoothed intensity below a fraction of the image's own range *and connected to the image border*
(a geodesic dilation from the border, so dark lesions or cysts inside the anatomy stay in). An image
without a dark background keeps (nearly) every pixel. Pure torch ops (pooling, comparisons): it is part of the
exported graph.

Example:
    >>> import torch
    >>> from anomalib_sir.models.sir.foreground import foreground_mask
    >>> image = torch.zeros(1, 3, 64, 64)
    >>> image[..., 16:48, 16:48] = 1.0                      # a bright square on a black background
    >>> mask = foreground_mask(image)
    >>> tuple(mask.shape), float(mask[0, 0, 32, 32]), float(mask[0, 0, 2, 2])
    ((1, 1, 64, 64), 1.0, 0.0)
    >>> float(foreground_mask(torch.full((1, 3, 64, 64), 0.5)).mean())   # no background: everything counts
    1.0

"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

#: Background: smoothed intensity below this fraction of the image's own intensity range.
FOREGROUND_THRESHOLD: float = 0.1
#: Smoothing before the threshold, as a fraction of the image side.
SMOOTHING_FRACTION: float = 1 / 32
#: Kernel of each geodesic-dilation step (the background grows this far per step, from the border).
GROWTH_KERNEL: int = 5


def _odd(size: int) -> int:
    return max(1, size // 2 * 2 + 1)


def foreground_mask(images: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """``(B, 1, H, W)`` float mask (1 = anatomy) of ``(B, C, H, W)`` images (any normalisation)."""
    height, width = images.shape[-2:]
    gray = images.mean(dim=1, keepdim=True)
    smooth_k = _odd(round(min(height, width) * SMOOTHING_FRACTION))
    gray = F.avg_pool2d(gray, smooth_k, stride=1, padding=smooth_k // 2, count_include_pad=False)
    low = gray.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    high = gray.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    dark = (gray < low + threshold * (high - low)).float()  # a flat image: no background
    border = torch.ones_like(dark)
    border[..., 1:-1, 1:-1] = 0
    background = dark * border
    for _ in range(-(-max(height, width) // (GROWTH_KERNEL - 1))):  # enough steps to cross the image
        background = F.max_pool2d(background, GROWTH_KERNEL, stride=1, padding=GROWTH_KERNEL // 2) * dark
    return 1.0 - background
