"""Allocator tuning for processes that handle whole encrypted models (the aggregator).

A 1M-parameter update is a ~30 MB buffer. glibc serves buffers above its mmap threshold with their own mapping,
returned to the OS on free, but it *raises* that threshold to the size of each such buffer freed (up to 32 MB on
64-bit). After the first envelope, the next ones therefore come from the heap: a growing buffer is moved by
copying, and freed space is kept in the heap instead of being returned. Measured on the aggregator benchmark: the
peak during a finalise went from 2.2 to 3.6 models above idle. Fixing the threshold at 256 KiB keeps every
envelope-sized buffer in its own mapping (grown with ``mremap``, unmapped on free) at the cost of page faults on
each fresh buffer (fold throughput 15 -> 12.6 M parameters/s/core on the reference machine; see BENCHMARKS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
LARGE_BUFFER_BYTES = 256 * 1024


def map_large_buffers_separately(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process (and processes it forks). False where glibc is not in use."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, and no dynamic threshold to undo
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the trim threshold was raised alongside the mmap threshold (to twice it) and is not reset by fixing the
    # latter: without it, freed heap space above the top would stay mapped
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    if not done:
        log.warning(
            "mallopt refused the %d KiB mmap/trim thresholds; aggregator memory may exceed 3 models", threshold // 1024
        )
    return done
