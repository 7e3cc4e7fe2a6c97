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
- granularity "tensor": scalar s/zp; "channel": one s/zp per index of `axis`; "head": one s/zp per
  head, where index i along `axis` belongs to head i % H (a bmm batch axis flattened as batch*H);
- integer products accumulate in int32 (qlevel 4) or exactly in float64 (qlevel 3, same
  integers); the result leaves the kernel as float32(acc) * float32(s_a * s_b) (+ bias), so
  qlevels 3 and 4 are bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

STORAGE_DTYPES = {8: torch.int8, 16: torch.int16}


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

    @property
    def storage_dtype(self) -> torch.dtype:
        bits = max(self.qmax.bit_length(), (-self.qmin - 1).bit_length()) + 1
        return torch.int8 if bits <= 8 else torch.int16


def _broadcast(p: torch.Tensor, x: torch.Tensor, qp: QuantParams) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return (p shaped to broadcast against the possibly-regrouped x, shape to view x as)."""
    if qp.axis is None:
        return p.reshape(()), tuple(x.shape)
    axis = qp.axis % x.dim()
    if qp.per_head:
        heads = p.numel()
        shape = (*x.shape[:axis], -1, heads, *x.shape[axis + 1 :])
        pshape = [1] * (x.dim() + 1)
        pshape[axis + 1] = heads
        return p.reshape(pshape), shape
    pshape = [1] * x.dim()
    pshape[axis] = p.numel()
    return p.reshape(pshape), tuple(x.shape)


def quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    scale, view = _broadcast(qp.scale, x, qp)
    zp, _ = _broadcast(qp.zero_point, x, qp)
    x = x.to(torch.float32)
    if qp.outliers is not None:
        x = x.index_fill(-1, qp.outliers, 0.0)
    if qp.smooth is not None:
        x = x / qp.smooth
    xv = x.reshape(view)
    q = round_half_away_from_zero(xv / scale) + zp.to(torch.float32)
    q = torch.clamp(q, qp.qmin, qp.qmax).to(qp.storage_dtype)
    return q.reshape(x.shape)


def dequantize(q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    scale, view = _broadcast(qp.scale, q, qp)
    zp, _ = _broadcast(qp.zero_point, q, qp)
    x = (q.reshape(view).to(torch.int32) - zp).to(torch.float32) * scale
    return x.reshape(q.shape)


def fake_quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """qlevel 2: quantize then dequantize, returned in x's dtype."""
    return dequantize(quantize(x, qp), qp).to(x.dtype)


def _centered(q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """q - zp as int32 (exact: both fit in 16 bits)."""
    zp, view = _broadcast(qp.zero_point, q, qp)
    return (q.reshape(view).to(torch.int32) - zp).reshape(q.shape)


def _int_matmul(a: torch.Tensor, b: torch.Tensor, emulate: bool) -> torch.Tensor:
    """Exact integer matrix product of 2-D integer operands.

    emulate=False: int32 kernels (qlevel 4). emulate=True: float64 arithmetic (qlevel 3), exact
    because every partial sum of int8 x int8 products stays far below 2^53; the result holds the
    same integers, so both qlevels round identically afterwards.
    """
    if emulate:
        return a.to(torch.float64) @ b.to(torch.float64)
    if a.dtype == torch.int8 and b.dtype == torch.int8 and a.shape[0] > 0:
        return torch._int_mm(a, b)
    return a.to(torch.int32) @ b.to(torch.int32)


def qlinear(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_qp: QuantParams,
    bias: torch.Tensor | None,
    input_qp: QuantParams,
    outlier_weight: torch.Tensor | None = None,
    emulate: bool = False,
) -> torch.Tensor:
    """qlevel-4 linear: int8 input x int8 per-channel symmetric weight, int32 accumulation.

    acc[m, n] = sum_k q_x[m, k] * q_w[n, k] - zp_x * sum_k q_w[n, k]; y = acc * (s_x * s_w[n]) + b.
    """
    assert input_qp.axis is None, "qlinear takes a per-tensor input scale"
    xq = quantize(x, input_qp)
    k = xq.shape[-1]
    acc = _int_matmul(xq.reshape(-1, k), weight_q.t(), emulate)
    if int(input_qp.zero_point) != 0:
        row_sums = weight_q.to(acc.dtype).sum(dim=1)
        acc = acc - input_qp.zero_point.to(acc.dtype) * row_sums
    out_scale = (input_qp.scale * weight_qp.scale).to(torch.float32)
    y = acc.to(torch.float32) * out_scale
    if bias is not None:
        y = y + bias.to(torch.float32)
    y = y.reshape(*x.shape[:-1], weight_q.shape[0])
    if outlier_weight is not None:
        y = y + outlier_product(x, input_qp, outlier_weight)
    return y.to(x.dtype)


def outlier_product(x: torch.Tensor, input_qp: QuantParams, outlier_weight: torch.Tensor) -> torch.Tensor:
    """The float side path of a linear's outlier input channels."""
    assert input_qp.outliers is not None
    return x.to(torch.float32).index_select(-1, input_qp.outliers) @ outlier_weight.to(torch.float32).t()


def qbmm(a: torch.Tensor, a_qp: QuantParams, b: torch.Tensor, b_qp: QuantParams,
         emulate: bool = False) -> torch.Tensor:
    """qlevel-4 batched matmul of two quantized operands with int32 accumulation.

    Operands are centered (q - zp) in int32 before the product; the result is
    float32(acc) * float32(s_a * s_b), with per-head scales selected along the batch axis.
    """
    qa = _centered(quantize(a, a_qp), a_qp)
    qb = _centered(quantize(b, b_qp), b_qp)
    acc = torch.bmm(qa.to(torch.float64), qb.to(torch.float64)) if emulate else torch.bmm(qa, qb)
    sa, _ = _broadcast(a_qp.scale, acc, a_qp)
    sb, view = _broadcast(b_qp.scale, acc, b_qp)
    y = acc.reshape(view).to(torch.float32) * (sa * sb).to(torch.float32)
    return y.reshape(acc.shape).to(a.dtype)
