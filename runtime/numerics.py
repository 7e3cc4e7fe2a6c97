"""All quantized numerics of mcq, in one place (spec: "Quantization conventions").

The toolkit's calibration simulation (qlevel 2), the qlevel-3 graph and the integer qlevel-4
graph call these functions, so the three cannot drift apart.

Conventions:
- q = clamp(round_half_away_from_zero(x / s) + zp, qmin, qmax), x / s an IEEE float32 division;
- x = (q - zp) * s in float32;
- signed storage: nbits=8 gives int8; symmetric ranges are [-(2^(n-1)-1), 2^(n-1)-1] with zp = 0,
  asymmetric ranges are [-2^(n-1), 2^(n-1)-1];
- outlier channels (optional): listed input channels are set to 0 before quantization; the
  consuming linear adds x[..., outliers] @ outlier_weight^T in float32;
- smoothing (optional): the quantizer represents x / smooth along the last axis (float32 division
  before the scale division); dequantize returns that smoothed tensor;
- rotation (optional, granularity "rotated_tensor"): then the last axis (n = a * b) is rotated by
  the orthogonal A (x) B: viewed as [..., a, b], the quantizer represents A @ X @ B^T in float32;
  dequantize returns that rotated tensor (the consuming linear's stored weight is rotated alike);
- granularity "tensor": scalar s/zp; "channel": one s/zp per index of `axis`; "head": one s/zp per
  head, where index i along `axis` belongs to head i % H (a bmm batch axis flattened as batch*H);
- integer products accumulate in int32 (qlevel 4) or exactly in float64 (qlevel 3, same
  integers); the result leaves the kernel as float32(acc) * float32(s_a * s_b) (+ bias), so
  qlevels 3 and 4 are bit-identical;
- granularity "group": `group_size` consecutive elements along `axis` share one s/zp (scale has
  the tensor's shape with that axis divided by group_size, rounded up: a shorter last group);
- formats (QuantParams.kind): "int" (int8 / int4 values, int4 packed two per byte only in the
  file), "fp8_e4m3fn" (q = fp8(clamp(x / s, -448, 448)), no zero point; products accumulate
  exactly in float64) and "bfloat16" (a cast; products accumulate in float32).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

INT, FP8, BF16 = "int", "fp8_e4m3fn", "bfloat16"
FP8_MAX = 448.0  # largest finite float8_e4m3fn value


def qrange(nbits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of signed storage with `nbits` bits."""
    top = 2 ** (nbits - 1) - 1
    return (-top if symmetric else -top - 1), top


def round_half_away_from_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


@dataclass(frozen=True)
class QuantParams:
    """Everything needed to quantize one tensor: float32 scale, int32 zero point, range, layout."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None  # None: per tensor
    per_head: bool = False  # index along axis selects scale i % len(scale)
    # SmoothQuant: the quantizer represents x / smooth (last axis); the consuming linear's stored
    # weight is W * smooth, so the integer GEMM keeps a per-tensor input scale
    smooth: torch.Tensor | None = None
    # outlier channels (int64 indices, last axis) are zeroed here: they bypass the integer GEMM
    outliers: torch.Tensor | None = None
    group_size: int | None = None  # granularity "group" along `axis`
    kind: str = INT  # INT, FP8 or BF16
    # granularity "rotated_tensor": the Kronecker factors (A [a, a], B [b, b]) of an orthogonal
    # rotation of the last axis, applied after smoothing: a per-tensor scale of a tensor whose
    # channels no longer differ in range (outlier channels are already out)
    rotation: tuple[torch.Tensor | None, torch.Tensor] | None = None

    @property
    def storage_dtype(self) -> torch.dtype:
        if self.kind == FP8:
            return torch.float8_e4m3fn
        if self.kind == BF16:
            return torch.bfloat16
        bits = max(self.qmax.bit_length(), (-self.qmin - 1).bit_length()) + 1
        return torch.int8 if bits <= 8 else torch.int16


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


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int4 values (in int8 storage) -> uint8, two per byte along the last axis: element 2i in the
    low nibble, 2i+1 in the high one; an odd last dimension gets a zero high nibble."""
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    nibbles = q.to(torch.int16) & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


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


# set while runtime.compiled traces a graph for the compiler (numerics then emits compiler-safe forms)
TRACING_FOR_COMPILER = False


def _int_matmul(a: torch.Tensor, b: torch.Tensor, emulate: bool) -> torch.Tensor:
    """Exact integer matrix product of 2-D integer operands.

    emulate=False: int32 results (qlevel 4). emulate=True: float64 arithmetic (qlevel 3), exact
    because every partial sum of int8 x int8 products stays far below 2^53; the result holds the
    same integers, so both qlevels round identically afterwards.
    """
    if emulate:
        return a.to(torch.float64) @ b.to(torch.float64)
    if a.dtype == torch.int8 and b.dtype == torch.int8 and a.shape[0] > 0:
        if not int8_gemm_is_exact():
            return _int8_matmul_by_float32_blocks(a, b)
        if TRACING_FOR_COMPILER and isinstance(a.shape[0], int) and a.shape[0] == 1:
            # one row (decode at batch 1): Inductor would lay it out with a row stride of 0, which
            # the CPU int8 GEMM misreads (garbage logits); explicit strides keep its fast one-row path
            return torch._int_mm(a.contiguous().as_strided((1, a.shape[1]), (a.shape[1], 1)), b)
        return torch._int_mm(a, b)
    return a.to(torch.int32) @ b.to(torch.int32)


# int8 x int8 products are at most 2^14 in magnitude: a float32 GEMM over this many of them keeps
# every partial sum an integer below 2^24, exact in any summation order
_EXACT_FLOAT32_DEPTH = 512


def _int8_matmul_by_float32_blocks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of int8 operands in int32, exactly, without `_int_mm`: float32 GEMMs over blocks of
    at most _EXACT_FLOAT32_DEPTH input channels (exact, see there), summed in int32."""
    if not float32_gemm_is_exact(_EXACT_FLOAT32_DEPTH, 128 * 128):  # TF32 / bf16 inside
        return a.to(torch.int32) @ b.to(torch.int32)
    acc = None
    for start in range(0, a.shape[1], _EXACT_FLOAT32_DEPTH):
        stop = start + _EXACT_FLOAT32_DEPTH
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
    255 x 127) and on random values, at one row (decode) and several (prefill)."""
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
        correction = input_qp.zero_point.to(torch.int32) * _int_matmul(ones, weight_q.t(), False)[0]
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
        acc = _int_matmul(xq2, p.weight_t, emulate)  # the stored [N, K] layout: fastest for _int_mm
        if p.zp_correction is not None:
            acc = acc - p.zp_correction.to(acc.dtype)
        y = acc.to(torch.float32) * p.out_scale
    if bias is not None:
        y = y + bias.to(torch.float32)
    y = y.reshape(*x.shape[:-1], weight_q.shape[0])
    if outlier_weight is not None:
        y = y + outlier_product(x, input_qp, outlier_weight)
    return y.to(x.dtype)


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


# -- weight-only kernels (spec Q.4a) ----------------------------------------------------------
# |y - y_ref| <= BF16_TOLERANCE * sum_k |x_k| M_nk + TWO_DIGIT_TOLERANCE * max_k |x_k| * sum_k M_nk,
# M_nk = (|q_nk| + |zp_nk|) * s_nk and y_ref the float32 linear on the dequantized weight. The first
# term covers the bf16 kernels (bf16 rounding of x, scale, zero and result: 2^-9 each), the second
# the two-digit int8 kernel (x to within max|x| / 64516). Measured: under 2^-10 of the bound.
BF16_TOLERANCE = 2.0 ** -7
TWO_DIGIT_TOLERANCE = 2.0 ** -15
_INT4_KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes aten's int4 CPU kernel takes
BF16_INT8, BF16_INT4, TWO_DIGIT_INT8 = "bf16-int8", "bf16-int4", "two-digit-int8"


@dataclass(frozen=True)
class WeightOnlyKernel:
    """A weight-only linear prepared once at load (spec Q.4a).

    BF16_INT8: int8, one scale per output channel, no zero points: aten `_weight_int8pack_mm`
      on bf16 activations (scales [N] bf16).
    BF16_INT4: int4 groups: aten `_weight_int4pack_mm_for_cpu`, whose layout reads unsigned
      nibbles u = q + 8 as (u - 8) * scale + zero, so zero = -zp * s gives (q - zp) * s; a group
      size the kernel lacks is split into smaller groups that repeat its scale (128 with a shorter
      last group of 64: 64). scales [K / group, N, 2] bf16.
    TWO_DIGIT_INT8: int8 per channel for outputs that must keep float32 precision (the logits:
      bf16 logits alone moved SmolLM2's perplexity measurably; CHANGELOG, session 4): each row of x is written as
      s1 * (a1 + a2 / 254) with int8 digits a1, a2 and s1 = max|x| / 127; two exact int32
      products, float32 epilogue (scales [N] float32)."""

    kind: str
    packed: torch.Tensor
    scales: torch.Tensor
    group: int  # BF16_INT4 only
    out_features: int


def prepare_weight_only(weight_q: torch.Tensor, qp: QuantParams, precise: bool = False) -> WeightOnlyKernel | None:
    """The kernel for a weight-only linear's stored weight, or None where there is none for its
    format (the caller then dequantizes the weight per call, spec Q.4). `precise`: the linear's
    output leaves the graph (logits): only TWO_DIGIT_INT8 qualifies."""
    if qp.kind != INT or qp.smooth is not None or qp.outliers is not None or weight_q.dim() != 2:
        return None
    n, k = weight_q.shape
    aten = torch.ops.aten
    int8_channel = qp.qmax == 127 and qp.axis == 0 and not qp.group_size and not bool(qp.zero_point.any())
    try:
        if int8_channel and precise:
            return WeightOnlyKernel(TWO_DIGIT_INT8, weight_q, qp.scale.reshape(n).to(torch.float32), 0, n)
        if int8_channel and hasattr(aten, "_weight_int8pack_mm"):
            # the kernel's vector loads fault on weights memory-mapped at a 16-byte-unaligned file
            # offset (safetensors only aligns to 8): those get an aligned copy
            aligned = weight_q.is_contiguous() and weight_q.data_ptr() % 64 == 0
            packed = weight_q if aligned else weight_q.clone(memory_format=torch.contiguous_format)
            return WeightOnlyKernel(BF16_INT8, packed, qp.scale.reshape(n).to(torch.bfloat16), 0, n)
        if not precise and qp.qmax == 7 and qp.axis == 1 and qp.group_size \
                and hasattr(aten, "_weight_int4pack_mm_for_cpu"):
            group = next((g for g in _INT4_KERNEL_GROUPS if qp.group_size % g == 0 and k % g == 0), None)
            if group is None:
                return None
            repeat, groups = qp.group_size // group, k // group
            scale = qp.scale.reshape(n, -1).repeat_interleave(repeat, 1)[:, :groups]
            zp = qp.zero_point.reshape(n, -1).repeat_interleave(repeat, 1)[:, :groups].to(torch.float32)
            scales = torch.stack([scale.t(), (-zp * scale).t()], dim=-1).to(torch.bfloat16).contiguous()
            packed = torch._convert_weight_to_int4pack_for_cpu((weight_q + 8).to(torch.int32).contiguous(), 1)
            return WeightOnlyKernel(BF16_INT4, packed, scales, group, n)
    except (RuntimeError, NotImplementedError):  # a shape this torch build's kernels reject
        return None
    return None


def _two_digit_int8_linear(x: torch.Tensor, kernel: WeightOnlyKernel) -> torch.Tensor:
    amax = x.abs().amax(dim=1, keepdim=True)
    s1 = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    s2 = s1 / 254.0
    a1 = torch.round(x / s1)
    a2 = torch.clamp(torch.round((x - a1 * s1) / s2), -127, 127)
    w_t = kernel.packed.t()
    acc1, acc2 = _int_matmul(a1.to(torch.int8), w_t, False), _int_matmul(a2.to(torch.int8), w_t, False)
    return (acc1.to(torch.float32) * s1 + acc2.to(torch.float32) * s2) * kernel.scales


def weight_only_linear(x: torch.Tensor, kernel: WeightOnlyKernel, bias: torch.Tensor | None) -> torch.Tensor:
    """qlevel-4 weight-only linear (spec Q.4a); float32 out, bias added in float32."""
    x2 = x.reshape(-1, x.shape[-1])
    if kernel.kind == TWO_DIGIT_INT8:
        y = _two_digit_int8_linear(x2.to(torch.float32), kernel)
    elif kernel.kind == BF16_INT4:
        y = torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), kernel.packed, kernel.group, kernel.scales)
    else:
        y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), kernel.packed, kernel.scales)
    y = y.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*x.shape[:-1], kernel.out_features).to(x.dtype)


def outlier_product(x: torch.Tensor, input_qp: QuantParams, outlier_weight: torch.Tensor) -> torch.Tensor:
    """The float side path of a linear's outlier input channels."""
    assert input_qp.outliers is not None
    return x.to(torch.float32).index_select(-1, input_qp.outliers) @ outlier_weight.to(torch.float32).t()


def centered_span(a_qp: QuantParams, b_qp: QuantParams) -> int:
    """A bound on |q_a - zp_a| * |q_b - zp_b| from the grids and zero points (no data pass)."""
    def bound(qp: QuantParams) -> int:
        zp = qp.zero_point
        lo, hi = (int(zp.min()), int(zp.max())) if zp.numel() else (0, 0)
        return max(qp.qmax - lo, hi - qp.qmin)

    return bound(a_qp) * bound(b_qp)


def float32_gemm_is_exact(depth: int, span: int) -> bool:
    """Whether a float32 GEMM of centered integers (|products| <= span, `depth` terms) gives the
    int32 result exactly: every partial sum is then an integer below 2^24, so any summation
    order is exact, and it is far faster than CPU int32 bmm (no BLAS for it); head_dim <= 258
    always qualifies for int8 operands. Not where the user allowed reduced-precision float32
    matmuls ("high" / "medium": TF32 / bf16 internally)."""
    return depth * span < 2 ** 24 and torch.get_float32_matmul_precision() == "highest"


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
