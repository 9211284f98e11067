"""Domains of a trained SIR model: named sets of reference normals registered without a gradient step.

A universal SIR decoder is trained once. A *domain* (a scanner, a department, a modality) is then added from
``k`` normal images: :class:`DomainBank` keeps, per domain, what scoring needs from the frozen teacher and
the trained decoder, all as buffers (saved in checkpoints, part of exported graphs):

* a **prototype**: the mean :func:`domain_descriptor` (per-channel mean and spread of each teacher scale,
  L2-normalised) of the reference views; images are routed to the nearest prototype (cosine distance), or
  to an explicit domain index where the caller knows it;
* a **correction** per teacher scale: the affine map from the decoder's reconstruction (each position's
  ``CORRECTION_CONTEXT x CORRECTION_CONTEXT`` neighbourhood) to the teacher's features that fits the
  reference views best (ridge regression, closed form: a linear 3x3 layer, no gradient step). A decoder
  trained on other domains reconstructs a new domain's normals with a systematic error; the correction
  removes it, while anomalies, which the decoder reconstructs toward normal, stay visible;
* a **radius**: an image farther than ``radius`` from its nearest prototype matches no domain: its score is
  ``NaN`` ("unknown domain") instead of a confident number;
* the reference views' **error statistics**: per-pixel mean and spread of the reconstruction error, which
  turn the raw ``1 - cos`` map into a z-map, so places hard to reconstruct in every normal view of *this*
  domain stop counting as anomalous;
* a **calibration**: the highest z-score of the reference views, subtracted from the domain's scores, so a
  score above ``0`` means "above every reference view" in every domain (one threshold for a mixed folder).

Example:
    >>> import torch
    >>> bank = DomainBank(num_scales=2)
    >>> views = [torch.randn(4, 8, 4, 4), torch.randn(4, 16, 2, 2)]
    >>> corrections = fit_corrections(views, [v * 0.5 for v in views])
    >>> top = lambda z: z.flatten(1).amax(dim=1)
    >>> bank.add("ct", domain_descriptor(views), corrections, torch.rand(4, 1, 16, 16), score=top, radius_floor=0.1)
    >>> bank.names, tuple(bank.prototypes.shape), tuple(bank.error_mean.shape), tuple(bank.correction_1.shape)
    (['ct'], (1, 48), (1, 1, 16, 16), (1, 145, 16))
    >>> index, distance = bank.route(domain_descriptor(views))
    >>> index.tolist(), bool((distance < bank.radii[index]).all())
    ([0, 0, 0, 0], True)
    >>> bank.remove("ct"); bank.names, bank.prototypes.shape[0]
    ([], 0)

"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import DynamicBufferMixin
from torch import nn

#: Floor of a z-map's denominator, as a fraction of the domain's mean per-pixel spread (a one-image domain
#: has near-zero spread in places; the floor keeps those pixels from exploding).
SPREAD_FLOOR = 1.0
#: Ridge strength of the corrections, relative to the mean eigenvalue of the reconstructions' Gram matrix.
RIDGE = 0.1
#: Side of the neighbourhood of the reconstruction a correction reads at each position (3: a 3x3 linear layer;
#: chosen on validation over the five held-out datasets, docs/ablations.md; 1 in checkpoints made before).
CORRECTION_CONTEXT = 3
#: A domain's radius: this many times the farthest of its own reference views from its prototype, and at
#: least the floor :class:`~anomalib_sir.models.sir.torch_model.SirModel` passes (``radius_floor``).
RADIUS_FACTOR = 3.0


def domain_descriptor(teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(B, D)`` style descriptor of images: per-channel mean and std of every scale, L2-normalised.

    Example:
        >>> features = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
        >>> d = domain_descriptor(features); tuple(d.shape), [round(float(n), 4) for n in d.norm(dim=1)]
        ((2, 48), [1.0, 1.0])

    """
    parts = [torch.cat([f.flatten(2).mean(dim=2), f.flatten(2).std(dim=2)], dim=1) for f in teacher_features]
    return F.normalize(torch.cat(parts, dim=1), dim=1)


class DomainBank(DynamicBufferMixin, nn.Module):
    """Per-domain prototypes, radii, error statistics and calibrations (buffers) and the domains' names.

    The names travel in the module's state dict (``get_extra_state``), so a checkpoint keeps its domains and
    :class:`DynamicBufferMixin` resizes the buffers to a loaded checkpoint's domain count.
    """

    def __init__(self, num_scales: int) -> None:
        super().__init__()
        self.num_scales = int(num_scales)
        self.names: list[str] = []
        for scale in range(self.num_scales):
            self.register_buffer(f"correction_{scale}", torch.empty(0, 0, 0))
        self.register_buffer("prototypes", torch.empty(0, 0))
        self.register_buffer("radii", torch.empty(0))
        self.register_buffer("error_mean", torch.empty(0, 1, 0, 0))
        self.register_buffer("error_std", torch.empty(0, 1, 0, 0))
        self.register_buffer("offsets", torch.empty(0))

    def __len__(self) -> int:
        """Count the registered domains."""
        return len(self.names)

    def get_extra_state(self) -> dict[str, Any]:
        """Return the domains' names (saved with the buffers)."""
        return {"names": list(self.names)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the names saved by :meth:`get_extra_state`."""
        self.names = [str(name) for name in state.get("names", [])]

    def index(self, name: str) -> int:
        """Position of domain ``name``; ``KeyError`` naming the registered domains otherwise."""
        if name not in self.names:
            known = ", ".join(self.names) or "none"
            msg = f"no domain named {name!r} (registered: {known})"
            raise KeyError(msg)
        return self.names.index(name)

    @torch.no_grad()
    def add(
        self,
        name: str,
        descriptors: torch.Tensor,
        corrections: Sequence[torch.Tensor],
        error_maps: torch.Tensor,
        score: Callable[[torch.Tensor], torch.Tensor],
        radius_floor: float,
    ) -> None:
        """Register domain ``name`` from its reference views' descriptors and raw error maps.

        Args:
            name: the domain's name (non-empty).
            descriptors: ``(V, D)`` :func:`domain_descriptor` of the views.
            corrections: per scale, the ``(C * context**2 + 1, C)`` map of :func:`fit_corrections` (one context
                for every domain of a bank).
            error_maps: ``(V, 1, H, W)`` anomaly maps of the same views, with the corrections (two views at least).
            score: the model's image score of ``(B, 1, H, W)`` maps (gives the calibration offset).
            radius_floor: the smallest radius (a one-image domain's views lie very close together).

        """
        if not name or len(error_maps) < 2 or len(descriptors) != len(error_maps):
            msg = f"domain {name!r}: need a non-empty name and two or more views with one map each"
            raise ValueError(msg)
        if len(self) and descriptors.shape[1] != self.prototypes.shape[1]:
            msg = f"domain {name!r}: descriptor size {descriptors.shape[1]} != the bank's {self.prototypes.shape[1]}"
            raise ValueError(msg)
        if name in self.names:
            msg = f"a domain named {name!r} exists already: remove it first (remove_domain) or pick another name"
            raise ValueError(msg)
        prototype = F.normalize(descriptors.mean(dim=0, keepdim=True), dim=1)
        radius = (1 - descriptors @ prototype.T).amax() * RADIUS_FACTOR
        mean, std = error_maps.mean(dim=0, keepdim=True), error_maps.std(dim=0, keepdim=True)
        offset = score(z_map(error_maps, mean, std)).amax()
        if len(self):  # the bank keeps one grid: the first domain's
            mean, std = _resize(mean, self.error_mean.shape[-2:]), _resize(std, self.error_mean.shape[-2:])
        self.names = [*self.names, name]
        self.prototypes = _append(self.prototypes, prototype)
        self.radii = _append(self.radii, radius.clamp_min(radius_floor).reshape(1))
        self.error_mean = _append(self.error_mean, mean)
        self.error_std = _append(self.error_std, std)
        self.offsets = _append(self.offsets, offset.reshape(1))
        for scale, correction in enumerate(corrections):
            setattr(self, f"correction_{scale}", _append(getattr(self, f"correction_{scale}"), correction[None]))

    def remove(self, name: str) -> None:
        """Forget domain ``name`` (``KeyError`` if there is none)."""
        position = self.index(name)
        keep = [i for i in range(len(self)) if i != position]
        self.names = [self.names[i] for i in keep]
        for buffer in ("prototypes", "radii", "error_mean", "error_std", "offsets", *self._corrections()):
            setattr(self, buffer, getattr(self, buffer)[keep].clone())

    def route(
        self, descriptors: torch.Tensor, explicit: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest domain of each descriptor and the cosine distance to it.

        ``explicit >= 0`` overrides the nearest domain; such an image is never "unknown" (distance ``0``): the
        caller knows its domain.
        """
        distances = 1 - descriptors @ self.prototypes.T
        index = distances.argmin(dim=1)
        distance = distances.gather(1, index.unsqueeze(1)).squeeze(1)
        if explicit is not None:
            index = torch.where(explicit >= 0, explicit, index)
            distance = torch.where(explicit >= 0, torch.zeros_like(distance), distance)
        return index, distance

    @torch.no_grad()
    def widen(self, context: int) -> None:
        """Rewrite the registered corrections as ``context x context`` ones that score exactly as they did.

        A checkpoint made before the 3x3 corrections holds per-position ``(C + 1, C)`` maps: each becomes the
        centre tap of a ``(C * context**2 + 1, C)`` map (zeros elsewhere), so domains added later share one shape.

        Example:
            >>> bank = DomainBank(num_scales=1)
            >>> views = [torch.randn(4, 8, 4, 4)]
            >>> bank.add("old", domain_descriptor(views), fit_corrections(views, views, context=1),
            ...          torch.rand(4, 1, 8, 8), score=lambda z: z.flatten(1).amax(dim=1), radius_floor=0.1)
            >>> first = torch.zeros(4, dtype=torch.long)
            >>> before = bank.correct(views, first)[0]
            >>> bank.widen(3)
            >>> tuple(bank.correction_0.shape), torch.allclose(bank.correct(views, first)[0], before)
            ((1, 73, 8), True)

        """
        for name in self._corrections():
            correction = getattr(self, name)
            if len(self) and correction.shape[1] == correction.shape[2] + 1:  # per position
                setattr(self, name, centre_tap(correction, context))

    def _corrections(self) -> list[str]:
        return [f"correction_{scale}" for scale in range(self.num_scales)]

    def correct(self, reconstruction: Sequence[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
        """Apply each image's domain correction to every scale of its ``(B, C, H, W)`` reconstruction."""
        return apply_corrections(reconstruction, [getattr(self, name)[index] for name in self._corrections()])

    def normalize(self, anomaly_map: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return the domain z-map of each raw ``(B, 1, H, W)`` map (its domain's statistics, resized to the map)."""
        size = anomaly_map.shape[-2:]
        return z_map(anomaly_map, _resize(self.error_mean[index], size), _resize(self.error_std[index], size))

    def calibrate(self, scores: torch.Tensor, index: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """Scores minus their domain's offset; ``NaN`` where the image is farther than the domain's radius."""
        calibrated = scores - self.offsets[index]
        return torch.where(distance > self.radii[index], torch.full_like(calibrated, float("nan")), calibrated)


def neighbourhoods(features: torch.Tensor, context: int) -> torch.Tensor:
    """``(B, C * context**2, H, W)``: each position's ``context x context`` neighbourhood (zero-padded) as channels.

    Tap-major: channels ``[t * C, (t + 1) * C)`` hold tap ``t`` (row-major; the centre tap is ``context**2 // 2``).

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> neighbourhoods(x, 3)[0, :, 0, 0].tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 3.0]

    """
    if context == 1:
        return features
    pad = context // 2
    height, width = features.shape[-2:]
    padded = F.pad(features, (pad, pad, pad, pad))
    taps = [padded[..., dy : dy + height, dx : dx + width] for dy in range(context) for dx in range(context)]
    return torch.cat(taps, dim=1)


def centre_tap(correction: torch.Tensor, context: int) -> torch.Tensor:
    """Rewrite a per-position ``(..., C + 1, C)`` map as a ``(..., C * context**2 + 1, C)`` one reading the centre.

    Example:
        >>> wide = centre_tap(torch.cat([torch.eye(2), torch.ones(1, 2)]), 3)
        >>> tuple(wide.shape), wide[8:10].tolist(), wide[-1].tolist(), float(wide.abs().sum())
        ((19, 2), [[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0], 4.0)

    """
    channels, centre = correction.shape[-1], context**2 // 2
    wide = correction.new_zeros(*correction.shape[:-2], channels * context**2 + 1, channels)
    wide[..., centre * channels : (centre + 1) * channels, :] = correction[..., :channels, :]
    wide[..., -1, :] = correction[..., -1, :]
    return wide


def correction_context(correction: torch.Tensor, channels: int) -> int:
    """Neighbourhood side of a ``(C * context**2 + 1, C)`` correction (``(..., rows, C)`` per image too)."""
    return round(((correction.shape[-2] - 1) / channels) ** 0.5)


def fit_corrections(
    teacher_features: Sequence[torch.Tensor],
    reconstruction: Sequence[torch.Tensor],
    ridge: float = RIDGE,
    context: int = CORRECTION_CONTEXT,
) -> list[torch.Tensor]:
    """Per scale, the ``(C * context**2 + 1, C)`` map ``[neighbourhood(r), 1] @ A ≈ t`` over the views (ridge).

    Example:
        >>> t = [torch.randn(3, 4, 5, 5)]
        >>> (a,) = fit_corrections(t, [t[0] * 2 + 1], ridge=0.0, context=1)
        >>> [round(float(v), 3) for v in (a[:4].diagonal().mean(), a[4].mean())]
        [0.5, -0.5]
        >>> tuple(fit_corrections(t, t)[0].shape)
        (37, 4)

    """
    corrections = []
    for t, r in zip(teacher_features, reconstruction, strict=True):
        x = neighbourhoods(r, context).transpose(0, 1).flatten(1).T.double()
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        y = t.transpose(0, 1).flatten(1).T.double()
        gram = x.T @ x
        damping = ridge * torch.trace(gram) / len(gram) * torch.eye(len(gram), dtype=gram.dtype)
        corrections.append(torch.linalg.solve(gram + damping, x.T @ y).float())
    return corrections


def identity_corrections(
    teacher_features: Sequence[torch.Tensor], context: int = CORRECTION_CONTEXT
) -> list[torch.Tensor]:
    """Per scale, the ``(C * context**2 + 1, C)`` map that leaves a reconstruction as it is (the centre tap).

    Example:
        >>> [tuple(a.shape) for a in identity_corrections([torch.randn(2, 4, 3, 3)])]
        [(37, 4)]

    """
    return [
        centre_tap(torch.cat([torch.eye(f.shape[1]), torch.zeros(1, f.shape[1])]).to(f), context)
        for f in teacher_features
    ]


def apply_corrections(
    reconstruction: Sequence[torch.Tensor], corrections: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``[neighbourhood(r), 1] @ A`` at every position of every scale; ``A`` ``(rows, C)``, or ``(B, rows, C)``.

    The neighbourhood's side is read from ``A``'s shape (:func:`correction_context`).

    Example:
        >>> r = [torch.randn(2, 3, 4, 4)]
        >>> torch.allclose(apply_corrections(r, identity_corrections(r))[0], r[0])
        True

    """
    out = []
    for r, correction in zip(reconstruction, corrections, strict=True):
        batch, channels, height, width = r.shape
        inputs = neighbourhoods(r, correction_context(correction, channels))
        flat = inputs.flatten(2).transpose(1, 2)
        flat = torch.cat([flat, torch.ones_like(flat[..., :1])], dim=2)
        matrix = correction if correction.ndim == 3 else correction.expand(batch, -1, -1)
        out.append(torch.bmm(flat, matrix).transpose(1, 2).reshape(batch, -1, height, width))
    return out


def z_map(anomaly_map: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(map - mean) / (std + SPREAD_FLOOR * mean(std))``: error in units of the references' own spread.

    Example:
        >>> z = z_map(torch.full((1, 1, 2, 2), 3.0), torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        >>> [round(v, 4) for v in z.flatten().tolist()]
        [1.0, 1.0, 1.0, 1.0]

    """
    floor = SPREAD_FLOOR * std.flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    # map - mean as a weighted sum over [map, mean] (exact): OpenVINO 2026.4 runs the plain subtraction of a
    # domain's statistics wrongly at batch size 1 (a constant score; tests/deploy/test_domains.py checks it)
    both = torch.cat([anomaly_map, mean.expand_as(anomaly_map)], dim=1)
    difference = (both * torch.tensor([1.0, -1.0], dtype=both.dtype).view(1, 2, 1, 1)).sum(dim=1, keepdim=True)
    return difference / (std + floor + 1e-6)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``size`` (unchanged if it has that size)."""
    size = tuple(size)
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _append(buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``buffer`` with ``rows`` appended along dim 0 (an empty buffer takes the rows' shape)."""
    rows = rows.detach().float().clone()
    return rows if buffer.shape[0] == 0 else torch.cat([buffer, rows.to(buffer.device)])
