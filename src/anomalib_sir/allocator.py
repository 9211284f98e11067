"""glibc allocator setting for processes that run anomalib's own core-set sampler (benchmark cells, speed script).

anomalib's k-center greedy core-set sampler (PatchCore's memory bank) allocates and frees one
``(N, d)`` temporary per selected vector. With glibc's adaptive mmap threshold those temporaries can stay on
the heap and fragment it (on Linux/glibc 2.36 with torch 2.14 a PatchCore bank exhausted 24 GB). SIR's own
sampler (:class:`~anomalib_sir.models.coreset.QuietKCenterGreedy`) reuses its buffers and needs no such
setting; the harness sets it per cell process for PatchCore.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # mallopt() parameter number in glibc's malloc.h
#: Allocations of this size and more get their own mmap, returned to the OS when freed.
MMAP_THRESHOLD_BYTES = 1 << 20


def limit_heap_fragmentation(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold in *this* process (what ``MALLOC_MMAP_THRESHOLD_`` does at start-up).

    It stays in force for the rest of the process: glibc does not return to the adaptive threshold. Returns
    ``False`` where it cannot be applied (not Linux, or a C library without ``mallopt``).

    Example:
        >>> limit_heap_fragmentation() in (True, False)
        True

    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
