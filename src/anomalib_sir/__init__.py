"""anomalib-sir: SIR (Semantic Iterative Reconstruction) as an anomalib model plugin.

Importing this package registers :class:`Sir` as an ``AnomalibModule`` subclass, so
``anomalib train --model Sir`` (short name) and ``--model anomalib_sir.Sir`` both resolve.

Example:
    >>> from anomalib_sir import Sir
    >>> Sir.__name__
    'Sir'

"""

from anomalib_sir.models import Sir, SirModel

__version__ = "0.1.0"
__all__ = ["Sir", "SirModel", "__version__"]
