"""Process tuning for the request path: keep large buffers in the heap (glibc malloc).

A request moves buffers of hundreds of KB (a sealed input, its plaintext).  glibc serves an
allocation of 128 KiB or more with a fresh ``mmap`` and gives it back with ``munmap`` (or, once
its dynamic threshold has moved, trims the heap top on every free), so each such buffer costs
a page fault per 4 KiB page on first touch: measured here, about 0.35 ms for 600 KB, more than
the AES-GCM pass over it.  :func:`keep_buffers_in_heap` sets fixed thresholds instead, so
buffers below ``mmap_below`` come from the heap and freed memory up to ``keep_bytes`` stays in
the process for the next request.  Anything larger (a model's plaintext) is still mapped and
given back when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Final

__all__ = ["keep_buffers_in_heap"]

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_MIB: Final = 1 << 20


def keep_buffers_in_heap(*, mmap_from: int = 32 * _MIB, keep_bytes: int = 128 * _MIB) -> bool:
    """Serve allocations below ``mmap_from`` from the heap and keep up to ``keep_bytes`` of
    freed heap; ``False`` where this is not glibc (nothing changes)."""
    for name, value in (("mmap_from", mmap_from), ("keep_bytes", keep_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 30:
            raise ValueError(f"{name} must be an int within (0, 2**30], got {value!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_from)) and bool(
        mallopt(_M_TRIM_THRESHOLD, keep_bytes)
    )
