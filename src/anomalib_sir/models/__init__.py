"""Models shipped by anomalib-sir.

Example:
    >>> from anomalib_sir.models import Sir

"""

from .sir import Sir, SirModel

__all__ = ["Sir", "SirModel"]
