"""Resident memory the runtime gives back: freed heap (glibc keeps it otherwise)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine path calls release_free_heap without torch in the process
    import torch


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


class Arena:
    """Long-lived tensors made at load (weights repacked for a kernel), copied side by side into
    a few large blocks instead of left where the allocator put them.

    Left in place, each packed weight sits between the freed temporaries its packing made (int4
    unpacked to int8, then int32: ~10x the packed bytes), and those holes stay in the heap
    (W4A16 SmolLM2: about its weights' size again); decode's temporaries, landing in a different
    hole step after step, page them back in over a generation. Blocks are BLOCK_BYTES, above
    glibc's largest mmap threshold, so each is its own mapping; the untouched end of the last one
    is never resident."""

    BLOCK_BYTES = 64 * 2**20
    ALIGN = 64  # bytes: what the CPU kernels' vector loads want

    def __init__(self) -> None:
        self._block: torch.Tensor | None = None
        self._used = 0

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of `t` in the arena (same dtype, shape and values)."""
        nbytes = t.numel() * t.element_size()
        if nbytes == 0 or nbytes > self.BLOCK_BYTES // 4:  # big ones are their own mapping already
            return t.contiguous()
        if self._block is None or self._used + nbytes > self.BLOCK_BYTES:
            import torch

            self._block, self._used = torch.empty(self.BLOCK_BYTES, dtype=torch.uint8), 0
        start = self._used
        self._used = -(-(start + nbytes) // self.ALIGN) * self.ALIGN
        out = self._block[start : start + nbytes].view(t.dtype).view(t.shape)
        out.copy_(t)
        return out
