"""Exact integer GEMMs on this CPU (spec Q.4, Q.1a): which kernel computes the int32 sums of
Q.4 exactly, and those sums through it.

`torch._int_mm` is the fast int8 kernel, but not exact on every CPU (see `int8_gemm_is_exact`);
a float32 GEMM is exact where every partial sum is an integer below 2^24, and is the fastest
exact form of small products (CPU int32 bmm has no BLAS). runtime.numerics picks among these
per call; tests/test_numerics_reference.py checks each against the int64 sums of
runtime.reference_numerics.
"""
from __future__ import annotations

import functools

import torch

# int8 x int8 products are at most 2^14 in magnitude: a float32 GEMM over this many of them keeps
# every partial sum an integer below 2^24, exact in any summation order
EXACT_FLOAT32_DEPTH = 512


def traced(t: torch.Tensor) -> bool:
    """Whether `t` is a value of a compiler trace rather than a tensor of values: runtime.compiled
    traces with make_fx, whose tensors are fake (FakeTensor, a subclass), and torch has no global
    flag that says so (`torch.compiler.is_compiling()` is False under make_fx)."""
    return type(t) is not torch.Tensor


def int_matmul(a: torch.Tensor, b: torch.Tensor, emulate: bool) -> torch.Tensor:
    """Exact integer matrix product of 2-D integer operands.

    emulate=False: int32 results (qlevel 4). emulate=True: float64 arithmetic (qlevel 3), exact
    because every partial sum of int8 x int8 products stays far below 2^53; the result holds the
    same integers, so both qlevels round identically afterwards.
    """
    if emulate:
        return a.to(torch.float64) @ b.to(torch.float64)
    if a.dtype == torch.int8 and b.dtype == torch.int8 and a.shape[0] > 0:
        if not int8_gemm_is_exact():
            return int8_matmul_by_float32_blocks(a, b)
        if traced(a) and isinstance(a.shape[0], int) and a.shape[0] == 1:
            # one row (decode at batch 1) in a trace for Inductor: it would lay the row out with a
            # row stride of 0, which the CPU int8 GEMM misreads (garbage logits); explicit strides
            # keep its fast one-row path. Interpreted, the row is already contiguous.
            return torch._int_mm(a.contiguous().as_strided((1, a.shape[1]), (a.shape[1], 1)), b)
        return torch._int_mm(a, b)
    return a.to(torch.int32) @ b.to(torch.int32)


def int8_matmul_by_float32_blocks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of int8 operands in int32, exactly, without `_int_mm`: float32 GEMMs over blocks of
    at most EXACT_FLOAT32_DEPTH input channels (exact, see there), summed in int32."""
    if not float32_gemm_is_exact(EXACT_FLOAT32_DEPTH, 128 * 128):  # TF32 / bf16 inside
        return a.to(torch.int32) @ b.to(torch.int32)
    acc = None
    for start in range(0, a.shape[1], EXACT_FLOAT32_DEPTH):
        stop = start + EXACT_FLOAT32_DEPTH
        part = (a[:, start:stop].to(torch.float32) @ b[start:stop].to(torch.float32)).to(torch.int32)
        acc = part if acc is None else acc + part
    assert acc is not None
    return acc


@functools.cache
def int8_gemm_is_exact() -> bool:
    """Whether this CPU's `torch._int_mm` returns exact int32 sums.

    It does where oneDNN has VNNI or AMX instructions. Without them (AVX2, AVX-512 before
    Cascade Lake, or `ONEDNN_MAX_CPU_ISA` below AVX512_CORE_VNNI) its kernel multiplies through
    `vpmaddubsw`, whose 16-bit pair sums saturate: results off by up to ~1e5. Probed once per
    process on the saturating pattern (127 x 127 pairs, which oneDNN's s8 -> u8 shift turns into
    255 x 127) and on random values, at one row (decode) and several (prefill). Called on real
    tensors before runtime.compiled traces anything: inside a trace its tensors would be fake."""
    gen = torch.Generator().manual_seed(0)
    for rows in (1, 5, 32):
        a = torch.randint(-128, 128, (rows, 64), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (64, 48), dtype=torch.int8, generator=gen)
        a[0], b[:, 0] = 127, 127
        try:
            got = torch._int_mm(a, b)
        except RuntimeError:
            return False
        if not torch.equal(got.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64)):
            return False
    return True


def float32_gemm_is_exact(depth: int, span: int) -> bool:
    """Whether a float32 GEMM of centered integers (|products| <= span, `depth` terms) gives the
    int32 result exactly: every partial sum is then an integer below 2^24, so any summation
    order is exact, and it is far faster than CPU int32 bmm (no BLAS for it); head_dim <= 258
    always qualifies for int8 operands. Not where the user allowed reduced-precision float32
    matmuls ("high" / "medium": TF32 / bf16 internally)."""
    return depth * span < 2 ** 24 and torch.get_float32_matmul_precision() == "highest"
