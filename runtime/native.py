"""The engine's native core (`runtime._native`, C++ built by the package's own build): CPU
feature checks, a persistent thread pool and the int8 kernels, on numpy buffers (no torch).

Kernel paths, one C++ file per instruction set (runtime/csrc/gemm_int8_*.cpp): avx512_vnni,
avx2 and portable, the best one this CPU and OS can run chosen at load (`cpu_features.cpp`:
cpuid and the register state the OS saves, not the flag list). `MCQ_NATIVE_ISA` forces a path
(tests), `MCQ_NUM_THREADS` the pool's size (default: the CPUs this process may run on).

Where the extension was not built (no C++ compiler at install) or does not load, `available()` is
False, `load_error()` says why, and the runtime warns once and keeps to its reference path.
"""
from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import numpy as np

_module: ModuleType | None
_error: str | None
try:
    _module = importlib.import_module("runtime._native")  # the C++ extension (setup.py)
    _error = None
except ImportError as e:  # not built, or built for another Python
    _module, _error = None, f"{type(e).__name__}: {e}"

_warned = False


def available() -> bool:
    return _module is not None


def load_error() -> str | None:
    """Why the native core is unavailable (None where it loaded)."""
    return _error


def warn_unavailable() -> None:
    """Says once per process that the engine is off and why."""
    global _warned
    if _module is None and not _warned:
        _warned = True
        warnings.warn(f"mcq native engine unavailable ({_error}); running the reference path. "
                      "Reinstall with a C++17 compiler (g++ or clang) to build it.", RuntimeWarning, stacklevel=3)


def core() -> ModuleType:
    """The extension module itself (the engine's planner builds programs with it)."""
    if _module is None:
        raise RuntimeError(f"mcq native engine unavailable: {_error}")
    return _module



def features() -> dict[str, bool]:
    """CPU features this process can use (asked of cpuid and the OS)."""
    return dict(core().features())


def usable_isas() -> list[str]:
    return list(core().usable_isas())


def isa() -> str:
    return str(core().isa())


def set_isa(name: str) -> None:
    core().set_isa(name)


def threads() -> int:
    return int(core().threads())


def set_threads(n: int) -> None:
    core().set_threads(int(n))


class Int8Weight:
    """An [N, K] int8 weight packed once for the int8 kernels; `matmul` gives the exact int32
    products x @ w.T (integer arithmetic, wrapping as int32 does)."""

    def __init__(self, weight: np.ndarray) -> None:
        if weight.dtype != np.int8 or weight.ndim != 2:
            raise TypeError(f"Int8Weight takes a 2-D int8 array, got {weight.dtype} {weight.shape}")
        self.shape: tuple[int, int] = (int(weight.shape[0]), int(weight.shape[1]))
        self._packed = core().Int8Weight(np.ascontiguousarray(weight), *self.shape)

    @property
    def packed(self) -> object:
        """The native packed weight (what `runtime._native.qlinear` takes)."""
        return self._packed

    @property
    def nbytes(self) -> int:
        return int(self._packed.nbytes)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n, k = self.shape
        if x.dtype != np.int8 or x.shape[-1:] != (k,):
            raise TypeError(f"x must be int8 [..., {k}], got {x.dtype} {x.shape}")
        x = np.ascontiguousarray(x)
        if out is None:
            out = np.empty((*x.shape[:-1], n), dtype=np.int32)
        elif out.dtype != np.int32 or out.shape != (*x.shape[:-1], n) or not out.flags.c_contiguous:
            raise TypeError(f"out must be C-contiguous int32 {(*x.shape[:-1], n)}, got {out.dtype} {out.shape}")
        self._packed.matmul(x, out)
        return out
