"""SIR: Semantic Iterative Reconstruction (see README.md in this folder).

Example:
    >>> from anomalib_sir.models.sir import Sir, SirModel

"""

from .lightning_model import Sir
from .torch_model import SirModel

__all__ = ["Sir", "SirModel"]
