"""anomalib-sir: SIR (Semantic Iterative Reconstruction) as an anomalib model plugin.

``Sir`` and ``SirModel`` are imported on first access (importing anomalib takes seconds), so the
``anomalib-sir`` console script starts instantly. The ``.pth`` import hook imports
:mod:`anomalib_sir.models` right after ``anomalib.models``, which registers :class:`Sir` as an
``AnomalibModule`` subclass: ``anomalib train --model Sir`` (short name) and ``--model anomalib_sir.Sir``
both resolve.

Example:
    >>> from anomalib_sir import Sir
    >>> Sir.__name__
    'Sir'

"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Sir", "SirModel", "__version__"]

if TYPE_CHECKING:
    from anomalib_sir.models import Sir, SirModel


def __getattr__(name: str) -> Any:
    """Import ``Sir`` / ``SirModel`` on first use."""
    if name in {"Sir", "SirModel"}:
        from anomalib_sir import models

        return getattr(models, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
