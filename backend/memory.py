"""Handing memory that a finished job freed back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def return_freed_memory() -> None:
    """Ask glibc to give its free heap pages back (nothing happens with another C library).

    An analysis of a long dialogue frees hundreds of MB (decoded audio and frames, activations), but
    glibc keeps freed pages in its heaps for reuse, so the process would stay near its peak size
    (README, Data safety, has the measurements).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
