"""The quantized numerics the runtime executes (spec: "Quantization conventions"), in the
shapes that are fast in torch: scales as broadcast views, ragged groups padded, int8 GEMMs on
`_int_mm` or exact float32 GEMMs (runtime.int_gemm), a linear's weight-side terms prepared once.

The toolkit's calibration simulation (qlevel 2), the qlevel-3 graph and the integer qlevel-4
graph call these functions, so the three cannot drift apart. The formulas themselves, plainly
written, are runtime.reference_numerics; tests/test_numerics_reference.py checks every function
here against them: equal integers, bit-identical floats where the spec promises it (qlevels 3
and 4 give the same bits: the same integers, then float32(acc) * float32(s_a * s_b) (+ bias)).

Where a form is already the formula (qrange, the rounding, int4 packing, a linear's bias and
outlier epilogue), it is the reference's, called or re-exported from there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.int_gemm import float32_gemm_is_exact, int_matmul

# the spec's vocabulary, and the formulas whose plain form is also the fast one, re-exported
# (`name as name`: an explicit re-export, PEP 484)
from runtime.reference_numerics import (
    BF16 as BF16,
    FP8 as FP8,
    FP8_MAX as FP8_MAX,
    INT as INT,
    QuantParams as QuantParams,
    linear_epilogue as linear_epilogue,
    outlier_product as outlier_product,
    pack_int4 as pack_int4,
    qrange as qrange,
    round_half_away_from_zero as round_half_away_from_zero,
)


def _broadcast(p: torch.Tensor, x: torch.Tensor, qp: QuantParams) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return (p shaped to broadcast against the possibly-regrouped x, shape to view x as)."""
    if qp.axis is None:
        return p.reshape(()), tuple(x.shape)
    axis = qp.axis % x.dim()
    if qp.group_size:
        groups = x.shape[axis] // qp.group_size
        shape = (*x.shape[:axis], groups, qp.group_size, *x.shape[axis + 1 :])
        return p.reshape(*x.shape[:axis], groups, 1, *x.shape[axis + 1 :]), shape
    if qp.per_head:
        heads = p.numel()
        shape = (*x.shape[:axis], -1, heads, *x.shape[axis + 1 :])
        pshape = [1] * (x.dim() + 1)
        pshape[axis + 1] = heads
        return p.reshape(pshape), shape
    pshape = [1] * x.dim()
    pshape[axis] = p.numel()
    return p.reshape(pshape), tuple(x.shape)


def _ragged(x: torch.Tensor, qp: QuantParams) -> int:
    """Zero elements to append along the group axis so that it splits into whole groups."""
    if not qp.group_size or qp.axis is None:
        return 0
    return -x.shape[qp.axis % x.dim()] % qp.group_size


def _pad_axis(x: torch.Tensor, axis: int, extra: int) -> torch.Tensor:
    pad = [0, 0] * (x.dim() - 1 - axis % x.dim()) + [0, extra]
    return torch.nn.functional.pad(x, pad)


def rotate(x: torch.Tensor, rotation: tuple[torch.Tensor | None, torch.Tensor]) -> torch.Tensor:
    """x rotated along its last axis by A (x) B: [..., a * b] viewed as [..., a, b] -> A @ (X @ B^T)
    (two float32 matrix products: a + b multiply-adds per element, not a * b). A is None for an
    identity A (a block-diagonal rotation): the same values, one product."""
    a, b = rotation
    shape = x.shape
    y = torch.mm(x.reshape(-1, b.shape[0]), b.t())
    if a is not None:
        y = torch.matmul(a, y.reshape(-1, a.shape[0], b.shape[0]))
    return y.reshape(shape)


def unrotate(x: torch.Tensor, rotation: tuple[torch.Tensor | None, torch.Tensor]) -> torch.Tensor:
    """The inverse of `rotate` (the transposed factors: they are orthogonal)."""
    a, b = rotation
    return rotate(x, (None if a is None else a.t(), b.t()))


def quantizer_input(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """The tensor a quantizer represents: x in float32, outlier channels set to 0, then / smooth,
    then rotated."""
    x = x.to(torch.float32)
    if qp.outliers is not None:
        x = x.index_fill(-1, qp.outliers, 0.0)
    if qp.smooth is not None:
        x = x / qp.smooth
    if qp.rotation is not None:
        x = rotate(x, qp.rotation)
    return x


def quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    extra = _ragged(x, qp)
    if extra:  # a shorter last group: quantize as if zero-padded, drop the padding
        assert qp.axis is not None
        return quantize(_pad_axis(x, qp.axis, extra), qp).narrow(qp.axis, 0, x.shape[qp.axis])
    x = quantizer_input(x, qp)
    if qp.kind == BF16:
        return x.to(torch.bfloat16)
    scale, view = _broadcast(qp.scale, x, qp)
    xv = x.reshape(view)
    if qp.kind == FP8:
        return torch.clamp(xv / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(x.shape)
    zp, _ = _broadcast(qp.zero_point, x, qp)
    q = round_half_away_from_zero(xv / scale) + zp.to(torch.float32)
    q = torch.clamp(q, qp.qmin, qp.qmax).to(qp.storage_dtype)
    return q.reshape(x.shape)


def dequantize(q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    extra = _ragged(q, qp)
    if extra:
        assert qp.axis is not None
        return dequantize(_pad_axis(q, qp.axis, extra), qp).narrow(qp.axis, 0, q.shape[qp.axis])
    if qp.kind == BF16:
        return q.to(torch.float32)
    scale, view = _broadcast(qp.scale, q, qp)
    if qp.kind == FP8:
        return (q.reshape(view).to(torch.float32) * scale).reshape(q.shape)
    zp, _ = _broadcast(qp.zero_point, q, qp)
    x = (q.reshape(view).to(torch.int32) - zp).to(torch.float32) * scale
    return x.reshape(q.shape)


def embedding_rows(table_q: torch.Tensor, qp: QuantParams, ids: torch.Tensor,
                   smooth: torch.Tensor | None = None) -> torch.Tensor:
    """Rows `ids` of a per-row (axis 0) quantized table, dequantized as Q.2 (then divided by
    `smooth`, for a table shared with a smoothed lm_head): only the looked-up rows are touched.
    Element for element the same float ops as dequantizing the whole table, so equal to it."""
    flat = ids.reshape(-1)
    q = table_q.index_select(0, flat).to(torch.int32)
    zp = qp.zero_point.reshape(-1).index_select(0, flat)[:, None] if qp.zero_point.numel() > 1 else qp.zero_point
    scale = qp.scale.reshape(-1).index_select(0, flat)[:, None] if qp.scale.numel() > 1 else qp.scale
    rows = (q - zp).to(torch.float32) * scale
    if smooth is not None:
        rows = rows / smooth
    return rows.reshape(*ids.shape, table_q.shape[-1])


def unpack_int4(packed: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of pack_int4: int8 values with a last axis of `length`."""
    # arithmetic shifts of the byte as int8 sign-extend each nibble: no widening, no select
    p = packed.view(torch.int8) if packed.dtype == torch.uint8 else packed.to(torch.uint8).view(torch.int8)
    low, high = torch.bitwise_left_shift(p, 4) >> 4, p >> 4
    return torch.stack([low, high], dim=-1).reshape(*p.shape[:-1], -1)[..., :length]


def fake_quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """qlevel 2: quantize then dequantize, returned in x's dtype."""
    return dequantize(quantize(x, qp), qp).to(x.dtype)


def _centered(q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """q - zp as int32 (exact: both fit in 16 bits)."""
    zp, view = _broadcast(qp.zero_point, q, qp)
    return (q.reshape(view).to(torch.int32) - zp).reshape(q.shape)


def has_kernel(weight_qp: QuantParams, input_qp: QuantParams) -> bool:
    """Whether `qlinear` has a kernel for this pair (else lowering dequantizes the weight and runs
    the linear in float): same format on both sides, a per-tensor input, a symmetric weight, no
    grouped fp8/bf16."""
    if weight_qp.kind != input_qp.kind or input_qp.axis is not None or bool(weight_qp.zero_point.any()):
        return False  # (weight zero points: asymmetric weight-only formats)
    return weight_qp.kind == INT or weight_qp.group_size is None


@dataclass(frozen=True)
class PreparedLinear:
    """What `qlinear` derives from the weight and the two specs, computed once per linear (at
    load) instead of per call: it changes no value, only when the work is done."""

    weight_q: torch.Tensor  # as stored ([N, K], int4 unpacked to int8)
    weight_qp: QuantParams
    input_qp: QuantParams
    out_scale: torch.Tensor  # float32(s_x * s_w): [N] (or [N, G] for groups)
    zp_correction: torch.Tensor | None  # zp_x * sum_k q_w[n, k] in int32 (per tensor / channel int)
    per_tensor_input: bool  # the input quantizes to int8 with python scalars (`_quantize_per_tensor`)
    x_scale: float
    x_zp: float
    weight_t: torch.Tensor  # weight_q.t(): the [K, N] view `_int_mm` takes, made once


def prepare_qlinear(weight_q: torch.Tensor, weight_qp: QuantParams, input_qp: QuantParams) -> PreparedLinear:
    assert has_kernel(weight_qp, input_qp), "qlinear takes a per-tensor input of the weight's format"
    out_scale = (input_qp.scale * weight_qp.scale).to(torch.float32)
    correction = None
    if weight_qp.kind == INT and not weight_qp.group_size and int(input_qp.zero_point) != 0:
        # row sums as an int8 product with a row of ones: exact int32, and no int32 copy of the
        # weight (such load-time temporaries stay in the heap as resident memory)
        ones = torch.ones((1, weight_q.shape[1]), dtype=torch.int8)
        correction = input_qp.zero_point.to(torch.int32) * int_matmul(ones, weight_q.t(), False)[0]
    plain = input_qp.kind == INT and input_qp.axis is None and input_qp.storage_dtype == torch.int8
    return PreparedLinear(weight_q, weight_qp, input_qp, out_scale, correction, plain,
                          float(input_qp.scale), float(input_qp.zero_point), weight_q.t())


_HALF = torch.tensor(0.5)


def _quantize_per_tensor(x: torch.Tensor, p: PreparedLinear) -> torch.Tensor:
    """`quantize` for a per-tensor int spec with python scalars: the same float32 operations
    (`quantizer_input`, x / s, round half away from zero as trunc(v + copysign(0.5, v)), + zp,
    clamp) without the broadcasting views and tensor zero point of the general path."""
    v = quantizer_input(x, p.input_qp) / p.x_scale
    q = torch.trunc(v + torch.copysign(_HALF, v))
    if p.x_zp:
        q = q + p.x_zp
    return torch.clamp(q, p.input_qp.qmin, p.input_qp.qmax).to(torch.int8)


def quantize_input(x: torch.Tensor, p: PreparedLinear) -> torch.Tensor:
    """A linear's input on its integer grid (`quantize` with its input spec)."""
    return _quantize_per_tensor(x, p) if p.per_tensor_input else quantize(x, p.input_qp)


def same_input_quantizer(a: QuantParams, b: QuantParams) -> bool:
    """Whether two input specs quantize every tensor to the same integers (equal scales, zero
    points, grids, smoothing and outlier channels)."""
    def same(t: torch.Tensor | None, u: torch.Tensor | None) -> bool:
        return (t is None and u is None) or (t is not None and u is not None and t.shape == u.shape
                                             and bool(torch.equal(t, u)))

    ra, rb = a.rotation or (None, None), b.rotation or (None, None)
    return (a.kind, a.qmin, a.qmax, a.axis, a.per_head, a.group_size) == \
        (b.kind, b.qmin, b.qmax, b.axis, b.per_head, b.group_size) \
        and same(a.scale, b.scale) and same(a.zero_point, b.zero_point) \
        and same(a.smooth, b.smooth) and same(a.outliers, b.outliers) \
        and same(ra[0], rb[0]) and same(ra[1], rb[1])


def qlinear(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_qp: QuantParams,
    bias: torch.Tensor | None,
    input_qp: QuantParams,
    outlier_weight: torch.Tensor | None = None,
    emulate: bool = False,
    prepared: PreparedLinear | None = None,
    xq: torch.Tensor | None = None,
) -> torch.Tensor:
    """qlevel-4 linear (spec Q.4) of a quantized input and a quantized weight of the same format.

    xq: x already quantized with `input_qp` (linears that read one input through equal quantizers
    share one quantization, `quantize_input`).

    int: acc[m, n] = sum_k q_x[m, k] * q_w[n, k] - zp_x * sum_k q_w[n, k] in int32;
         y = float32(acc) * float32(s_x * s_w[n]) + b. With group weights each group g has its own
         acc_g and y = sum over g in order of float32(acc_g) * float32(s_x * s_w[n, g]), in float32.
    fp8: the same product, accumulated exactly in float64 (every partial sum of fp8 x fp8
         products is a multiple of 2^-18 below 2^36: exact), no zero points.
    bf16: float32 linear of the bf16 operands (order of accumulation left to the BLAS).
    """
    p = prepared or prepare_qlinear(weight_q, weight_qp, input_qp)
    if xq is None:
        xq = quantize_input(x, p)
    k = xq.shape[-1]
    xq2 = xq.reshape(-1, k)
    if weight_qp.kind == BF16:
        y = torch.nn.functional.linear(xq2.to(torch.float32), weight_q.to(torch.float32))
    elif weight_qp.kind == FP8:
        acc = xq2.to(torch.float64) @ weight_q.to(torch.float64).t()
        y = acc.to(torch.float32) * p.out_scale
    elif weight_qp.group_size:
        y = _grouped_int_linear(xq2, weight_q, weight_qp, input_qp, emulate)
    else:
        acc = int_matmul(xq2, p.weight_t, emulate)  # the stored [N, K] layout: fastest for _int_mm
        if p.zp_correction is not None:
            acc = acc - p.zp_correction.to(acc.dtype)
        y = acc.to(torch.float32) * p.out_scale
    return linear_epilogue(y, x, bias, input_qp, outlier_weight)


def _grouped_int_linear(xq: torch.Tensor, weight_q: torch.Tensor, weight_qp: QuantParams,
                        input_qp: QuantParams, emulate: bool) -> torch.Tensor:
    g = int(weight_qp.group_size or 0)
    extra = -weight_q.shape[1] % g  # a shorter last group: zero columns add nothing to its sums
    if extra:
        xq, weight_q = _pad_axis(xq, 1, extra), _pad_axis(weight_q, 1, extra)
    n_groups = weight_q.shape[1] // g
    xg = xq.reshape(xq.shape[0], n_groups, g).transpose(0, 1)  # [G, M, g]
    wg = weight_q.reshape(weight_q.shape[0], n_groups, g).permute(1, 2, 0)  # [G, g, N]
    if emulate:
        acc = torch.bmm(xg.to(torch.float64), wg.to(torch.float64))
    else:
        acc = torch.bmm(xg.to(torch.int32), wg.to(torch.int32))
    if int(input_qp.zero_point) != 0:
        acc = acc - input_qp.zero_point.to(acc.dtype) * wg.to(acc.dtype).sum(dim=1, keepdim=True)
    scales = (input_qp.scale * weight_qp.scale).to(torch.float32).t()  # [G, N]
    y = acc[0].to(torch.float32) * scales[0]
    for i in range(1, n_groups):  # a fixed order: the float32 sum is part of the kernel's definition
        y = y + acc[i].to(torch.float32) * scales[i]
    return y


def centered_span(a_qp: QuantParams, b_qp: QuantParams) -> int:
    """A bound on |q_a - zp_a| * |q_b - zp_b| from the grids and zero points (no data pass)."""
    def bound(qp: QuantParams) -> int:
        zp = qp.zero_point
        lo, hi = (int(zp.min()), int(zp.max())) if zp.numel() else (0, 0)
        return max(qp.qmax - lo, hi - qp.qmin)

    return bound(a_qp) * bound(b_qp)


def qbmm(a: torch.Tensor, a_qp: QuantParams, b: torch.Tensor, b_qp: QuantParams,
         emulate: bool = False, span: int | None = None) -> torch.Tensor:
    """qlevel-4 batched matmul of two quantized operands (spec Q.4).

    int: operands centered (q - zp) in int32, int32 accumulation; fp8: exact float64
    accumulation; bf16: float32. The result is float32(acc) * float32(s_a * s_b), with per-head
    scales selected along the batch axis.
    """
    qa, qb = quantize(a, a_qp), quantize(b, b_qp)
    if a_qp.kind == BF16:
        return torch.bmm(qa.to(torch.float32), qb.to(torch.float32)).to(a.dtype)
    if a_qp.kind == FP8:
        acc = torch.bmm(qa.to(torch.float64), qb.to(torch.float64))
    else:
        qa, qb = _centered(qa, a_qp), _centered(qb, b_qp)
        depth = qa.shape[-1]
        if emulate or not isinstance(depth, int):
            # emulation; or a trace for the compiler with a symbolic depth (P.V over a growing
            # past), whose compiled code must stay exact at every length: float64 (exact below 2^53)
            acc = torch.bmm(qa.to(torch.float64), qb.to(torch.float64))
        elif float32_gemm_is_exact(depth, centered_span(a_qp, b_qp) if span is None else span):
            acc = torch.bmm(qa.to(torch.float32), qb.to(torch.float32))
        else:
            acc = torch.bmm(qa, qb)
    sa, _ = _broadcast(a_qp.scale, acc, a_qp)
    sb, view = _broadcast(b_qp.scale, acc, b_qp)
    y = acc.reshape(view).to(torch.float32) * (sa * sb).to(torch.float32)
    return y.reshape(acc.shape).to(a.dtype)
