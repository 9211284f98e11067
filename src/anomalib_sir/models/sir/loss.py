"""Cosine feature-reconstruction loss for SIR: mean ``1 - cos`` over positions and scales, then over loops.

Example:
    >>> import torch
    >>> from anomalib_sir.models.sir.loss import SirLoss
    >>> teacher = [torch.ones(1, 4, 2, 2)]
    >>> perfect, opposite = [torch.ones(1, 4, 2, 2)], [-torch.ones(1, 4, 2, 2)]
    >>> SirLoss()(teacher, [perfect]).item(), SirLoss()(teacher, [opposite, perfect]).item()
    (0.0, 1.0)

"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def cosine_distance(teacher: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-position ``1 - cos`` between two ``(B, C, H, W)`` maps, returned as ``(B, H, W)``."""
    return 1.0 - F.cosine_similarity(teacher, reconstruction, dim=1, eps=1e-6)


class SirLoss(nn.Module):
    """Mean ``1 - cos`` over positions and scales, averaged over the refinement loops (each loop counts)."""

    def forward(
        self,
        teacher_features: Sequence[torch.Tensor],
        reconstructions: Sequence[Sequence[torch.Tensor]],
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            teacher_features: one ``(B, C_s, H_s, W_s)`` tensor per scale (not differentiated).
            reconstructions: for each loop, one tensor per scale with the teacher's shapes.

        """
        per_loop = [
            torch.stack([cosine_distance(t.detach(), r).mean() for t, r in zip(teacher_features, loop, strict=True)])
            for loop in reconstructions
        ]
        return torch.stack([loop.mean() for loop in per_loop]).mean()
