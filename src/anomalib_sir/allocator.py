"""glibc allocator setting shared by the model's memory bank, the benchmark harness and the speed benchmark.

anomalib's k-center greedy core-set sampler (SIR's kNN memory bank, PatchCore) allocates and frees one
``(N, d)`` temporary per selected vector. With glibc's adaptive mmap threshold those temporaries can stay on
the heap and fragment it: on this Linux/glibc 2.36 with torch 2.14, a 150-image full-shot SIR bank grew the
process by about 1 GB/s until the OOM killer stopped it at 24 GB (PatchCore: 24 GB on a 20-image set); the
same bank needs under 1.2 GB with a fixed threshold.
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
