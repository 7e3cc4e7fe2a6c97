"""The spec's quantization formulas (spec/mcq-format.md, "Quantization conventions"), and nothing
else: one function per formula, written as the spec states it.

Why a second copy of the numerics: what the runtime executes (runtime.numerics, runtime.prepared,
runtime.int_gemm, runtime.weight_only, the native engine) is shaped for speed (broadcast views,
padded groups, float32 GEMMs standing in for int32 ones, precomputed parameters), and each of
those shapes is a claim that it computes the same values. This module is what they are checked
against (tests/test_numerics_reference.py), so it is kept plain: parameters expanded to one value
per element by the spec's index rules, integer sums taken exactly in int64, no caching, no
probes, no flags, no fast paths. Slow is fine; nothing in the runtime's hot paths calls it.

The vocabulary (QuantParams, the format kinds, qrange) lives here too, because the spec defines
it; runtime.numerics re-exports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

INT, FP8, BF16 = "int", "fp8_e4m3fn", "bfloat16"  # Q.2a formats (int8 and int4 are both INT)
FP8_MAX = 448.0  # largest finite float8_e4m3fn value (Q.2a)
# Q.4a: |y - y_ref| <= BF16_TOLERANCE * sum_k |x_k| M_nk + TWO_DIGIT_TOLERANCE * max_k |x_k| * sum_k M_nk
BF16_TOLERANCE = 2.0 ** -7
TWO_DIGIT_TOLERANCE = 2.0 ** -15


def qrange(nbits: int, symmetric: bool) -> tuple[int, int]:
    """Q.2: signed storage; symmetric [-(2^(n-1)-1), 2^(n-1)-1], asymmetric [-2^(n-1), 2^(n-1)-1]."""
    top = 2 ** (nbits - 1) - 1
    return (-top if symmetric else -top - 1), top


def round_half_away_from_zero(v: torch.Tensor) -> torch.Tensor:
    """Q.2: sign(v) * floor(|v| + 0.5)."""
    return torch.sign(v) * torch.floor(torch.abs(v) + 0.5)


@dataclass(frozen=True)
class QuantParams:
    """One quant spec of Q.2 with its tensors read: float32 scale, int32 zero point, grid, layout."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None  # None: granularity "tensor" (or "rotated_tensor")
    per_head: bool = False  # granularity "head": index i along axis uses value i mod H
    # Q.2 smooth: the quantizer represents x / smooth (last axis); the consuming linear's stored
    # weight is W * smooth (Q.3), so the integer GEMM keeps a per-tensor input scale
    smooth: torch.Tensor | None = None
    # Q.2 outliers: these input channels (int64 indices, last axis) are set to 0 before
    # quantization; the linear adds them back in float32 (Q.3)
    outliers: torch.Tensor | None = None
    group_size: int | None = None  # granularity "group" along `axis` (Q.2a)
    kind: str = INT  # INT, FP8 or BF16
    # granularity "rotated_tensor": the factors (A [a, a], B [b, b]) of an orthogonal rotation of
    # the last axis, applied after smoothing; A is None where it is the identity (a reader may
    # skip that product, Q.2)
    rotation: tuple[torch.Tensor | None, torch.Tensor] | None = None

    @property
    def storage_dtype(self) -> torch.dtype:
        """Q.2a storage as the runtime holds it (int4 unpacked: one value per int8)."""
        if self.kind == FP8:
            return torch.float8_e4m3fn
        if self.kind == BF16:
            return torch.bfloat16
        bits = max(self.qmax.bit_length(), (-self.qmin - 1).bit_length()) + 1
        return torch.int8 if bits <= 8 else torch.int16


def per_element(param: torch.Tensor, shape: torch.Size | tuple[int, ...], qp: QuantParams) -> torch.Tensor:
    """Q.2 / Q.2a granularity: the scale or zero point that each element of a tensor of `shape`
    uses. tensor: the one value; channel: value i for index i along `axis`; head: value i mod H;
    group: `group_size` consecutive indices along `axis` share one value, the last group shorter."""
    if qp.axis is None:
        return param.reshape(()).expand(shape)
    axis = qp.axis % len(shape)
    n = shape[axis]
    if qp.group_size:
        return param.repeat_interleave(qp.group_size, dim=axis).narrow(axis, 0, n).expand(shape)
    index = torch.arange(n) % param.numel()  # channel: numel() == n, so i mod n = i
    along = [1] * len(shape)
    along[axis] = n
    return param.reshape(-1)[index].reshape(along).expand(shape)


def rotate(x: torch.Tensor, rotation: tuple[torch.Tensor | None, torch.Tensor]) -> torch.Tensor:
    """Q.2 rotated_tensor: the last axis viewed as [a, b] (row-major) becomes A @ (X @ B^T)."""
    a, b = rotation
    matrix = x.reshape(*x.shape[:-1], -1, b.shape[0])
    y = torch.einsum("...jl,kl->...jk", matrix, b)  # X @ B^T
    if a is not None:
        y = torch.einsum("ij,...jk->...ik", a, y)  # A @ (X @ B^T)
    return y.reshape(x.shape)


def quantizer_input(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Q.2 x': x in float32 with the outlier channels set to 0, divided by smooth (by 1 where
    there is none: x / 1 is x, bit for bit), then rotated."""
    width = x.shape[-1]
    outlier = torch.zeros(width, dtype=torch.bool)
    if qp.outliers is not None:
        outlier[qp.outliers] = True
    smooth = torch.ones(width) if qp.smooth is None else qp.smooth
    x = torch.where(outlier, 0.0, x.to(torch.float32)) / smooth
    return x if qp.rotation is None else rotate(x, qp.rotation)


def quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Q.2 (int), Q.2a (fp8_e4m3fn, bfloat16)."""
    x = quantizer_input(x, qp)
    if qp.kind == BF16:
        return x.to(torch.bfloat16)
    s = per_element(qp.scale, x.shape, qp)
    if qp.kind == FP8:
        return torch.clamp(x / s, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    zp = per_element(qp.zero_point, x.shape, qp).to(torch.float32)
    return torch.clamp(round_half_away_from_zero(x / s) + zp, qp.qmin, qp.qmax).to(qp.storage_dtype)


def dequantize(q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Q.2 float32(q - zp) * s; fp8 float32(q) * s; bfloat16 float32(q)."""
    if qp.kind == BF16:
        return q.to(torch.float32)
    s = per_element(qp.scale, q.shape, qp)
    if qp.kind == FP8:
        return q.to(torch.float32) * s
    zp = per_element(qp.zero_point, q.shape, qp).to(torch.int32)
    return (q.to(torch.int32) - zp).to(torch.float32) * s


def fake_quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Q.1 qlevel 2: quantize then dequantize, in x's dtype."""
    return dequantize(quantize(x, qp), qp).to(x.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Q.2a int4 storage: uint8, element 2i in the low nibble and 2i+1 in the high one (two's
    complement nibbles) along the last axis; an odd last dimension gets a zero high nibble."""
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    nibbles = q.to(torch.int16) & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, length: int) -> torch.Tensor:
    """Q.2a int4 storage read back: the two nibbles of each byte, low first, as signed values."""
    byte = packed.to(torch.int32)
    nibbles = torch.stack([byte & 0xF, byte >> 4], dim=-1).reshape(*byte.shape[:-1], -1)[..., :length]
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)


def int_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Q.4 integer (batched) matrix product with int32 accumulation: the exact sum, taken in
    int64, wrapped to int32 as int32 arithmetic wraps."""
    return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)


def scale_product(s_a: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """Q.4 float32(s_a * s_b): the exact product (float64 holds it) rounded once to float32."""
    return (s_a.to(torch.float64) * s_b.to(torch.float64)).to(torch.float32)


def outlier_product(x: torch.Tensor, input_qp: QuantParams, outlier_weight: torch.Tensor) -> torch.Tensor:
    """Q.3: x[..., outliers] @ outlier_weight^T in float32, from the unquantized input."""
    assert input_qp.outliers is not None
    return x.to(torch.float32).index_select(-1, input_qp.outliers) @ outlier_weight.to(torch.float32).T


def qlinear(x: torch.Tensor, weight_q: torch.Tensor, weight_qp: QuantParams, bias: torch.Tensor | None,
            input_qp: QuantParams, outlier_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Q.4 linear of a quantized input and weight of one format (+ Q.3's outlier product)."""
    xq = quantize(x, input_qp).reshape(-1, x.shape[-1])
    s_x = input_qp.scale.reshape(())
    if weight_qp.kind == BF16:
        y = xq.to(torch.float32) @ weight_q.to(torch.float32).T
    elif weight_qp.kind == FP8:
        acc = xq.to(torch.float64) @ weight_q.to(torch.float64).T  # exact: see Q.4
        y = acc.to(torch.float32) * scale_product(s_x, per_element(weight_qp.scale, weight_q.shape, weight_qp)[:, 0])
    else:
        centered = xq.to(torch.int32) - input_qp.zero_point.reshape(()).to(torch.int32)
        s_w = per_element(weight_qp.scale, weight_q.shape, weight_qp)  # [N, K]
        g = weight_qp.group_size or weight_q.shape[1]  # not grouped: one group of all K
        total: torch.Tensor | None = None
        for start in range(0, weight_q.shape[1], g):  # in increasing g, summed in float32
            acc = int_product(centered[:, start:start + g], weight_q[:, start:start + g].T)
            term = acc.to(torch.float32) * scale_product(s_x, s_w[:, start])
            total = term if total is None else total + term
        assert total is not None
        y = total
    return linear_epilogue(y, x, bias, input_qp, outlier_weight)


def linear_epilogue(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, input_qp: QuantParams,
                    outlier_weight: torch.Tensor | None) -> torch.Tensor:
    """Q.4 / Q.3: the float32 product y [rows, N] of x [..., K], + b, + the outlier product, in
    that order; returned in x's dtype and shape [..., N]."""
    if bias is not None:
        y = y + bias.to(torch.float32)
    y = y.reshape(*x.shape[:-1], y.shape[-1])
    if outlier_weight is not None:
        y = y + outlier_product(x, input_qp, outlier_weight)
    return y.to(x.dtype)


def qbmm(a: torch.Tensor, a_qp: QuantParams, b: torch.Tensor, b_qp: QuantParams) -> torch.Tensor:
    """Q.4 Q.K^T: y = float32(acc) * float32(s_a * s_b), the scales of each batch index (head)."""
    qa, qb = quantize(a, a_qp), quantize(b, b_qp)
    if a_qp.kind == BF16:
        return (qa.to(torch.float32) @ qb.to(torch.float32)).to(a.dtype)
    if a_qp.kind == FP8:
        acc = qa.to(torch.float64) @ qb.to(torch.float64)
    else:
        za, zb = per_element(a_qp.zero_point, qa.shape, a_qp), per_element(b_qp.zero_point, qb.shape, b_qp)
        acc = int_product(qa.to(torch.int32) - za, qb.to(torch.int32) - zb)
    scale = scale_product(per_element(a_qp.scale, acc.shape, a_qp), per_element(b_qp.scale, acc.shape, b_qp))
    return (acc.to(torch.float32) * scale).to(a.dtype)


def embedding_rows(table_q: torch.Tensor, qp: QuantParams, ids: torch.Tensor,
                   smooth: torch.Tensor | None = None) -> torch.Tensor:
    """Q.3a: row t is dequantize(w)[t], divided by smooth where the spec carries it."""
    rows = dequantize(table_q, qp)[ids]
    return rows if smooth is None else rows / smooth


def weight_only_linear(x: torch.Tensor, weight_q: torch.Tensor, qp: QuantParams,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """Q.4a y_ref: the float32 linear on the dequantized weight."""
    y = x.to(torch.float32) @ dequantize(weight_q, qp).T
    return y if bias is None else y + bias.to(torch.float32)


def weight_only_tolerance(x: torch.Tensor, weight_q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Q.4a: how far a weight-only kernel's y[m, n] may be from y_ref, with
    M[n, k] = (|q_w[n, k]| + |zp_w[n, k]|) * s_w[n, k]."""
    zp = per_element(qp.zero_point, weight_q.shape, qp).to(torch.float32)
    magnitude = (weight_q.to(torch.float32).abs() + zp.abs()) * per_element(qp.scale, weight_q.shape, qp)
    x = x.to(torch.float32).abs()
    return BF16_TOLERANCE * (x @ magnitude.T) + TWO_DIGIT_TOLERANCE * x.amax(-1, keepdim=True) * magnitude.sum(1)
