"""Give the C heap's free pages back to the kernel after each agent cycle.

A cycle decodes watch events and libvirt's XML and statistics in worker threads, and glibc
keeps what they freed in its per-thread arenas: without a trim the agent's RSS creeps up to its
busiest cycle's high-water mark and stays there. ``malloc_trim(0)`` returns every whole free
page of every arena (glibc 2.8 and later release pages inside the heap, not only at its top).
C libraries without it (musl) make this a no-op.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Return the heap's free pages to the kernel; True when some were returned."""
    return _TRIM is not None and _TRIM(0) == 1
