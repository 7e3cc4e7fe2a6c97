"""Resident memory the runtime gives back: freed heap (glibc keeps it otherwise)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable


def release_free_heap() -> None:
    """Hand the heap's free memory back to the OS (glibc `malloc_trim`; elsewhere nothing).

    Building a graph frees ~16 MiB of temporaries (code generation, decoded lists) that glibc
    would keep as resident memory of the process for good."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None
