"""Cosine feature-reconstruction loss for SIR.

Example:
    >>> import torch
    >>> from anomalib_sir.models.sir.loss import SirLoss
    >>> teacher = [torch.randn(2, 8, 4, 4)]
    >>> loss = SirLoss(loop_weighting="last")
    >>> float(loss(teacher, [[teacher[0].clone()]])) < 1e-6
    True

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

LoopWeighting = Literal["all", "last", "increasing"]


def cosine_distance(teacher: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-position ``1 - cos`` between two ``(B, C, H, W)`` maps, returned as ``(B, H, W)``."""
    return 1.0 - F.cosine_similarity(teacher, reconstruction, dim=1, eps=1e-6)


class SirLoss(nn.Module):
    """Mean ``1 - cos`` over positions and scales, combined over refinement loops.

    Args:
        loop_weighting: ``"all"`` averages every loop's loss equally, ``"last"`` uses only the final
            loop, ``"increasing"`` weights loop ``t`` (1-based) by ``t``.

    """

    def __init__(self, loop_weighting: LoopWeighting = "all") -> None:
        super().__init__()
        if loop_weighting not in {"all", "last", "increasing"}:
            msg = f"loop_weighting must be 'all', 'last' or 'increasing', got {loop_weighting!r}"
            raise ValueError(msg)
        self.loop_weighting = loop_weighting

    def forward(
        self,
        teacher_features: Sequence[torch.Tensor],
        reconstructions: Sequence[Sequence[torch.Tensor]],
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            teacher_features: one ``(B, C_s, H_s, W_s)`` tensor per scale.
            reconstructions: for each loop, one tensor per scale with the teacher's shapes.

        """
        per_loop = torch.stack(
            [
                torch.stack(
                    [cosine_distance(t.detach(), r).mean() for t, r in zip(teacher_features, loop, strict=True)]
                ).mean()
                for loop in reconstructions
            ]
        )
        if self.loop_weighting == "last":
            return per_loop[-1]
        if self.loop_weighting == "all":
            return per_loop.mean()
        weights = torch.arange(1, len(per_loop) + 1, device=per_loop.device, dtype=per_loop.dtype)
        return (per_loop * weights).sum() / weights.sum()
