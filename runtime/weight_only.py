"""Weight-only linears at qlevel 4 (spec Q.4a): faster kernels than the definition (the float32
linear on the dequantized weight, `reference_numerics.weight_only_linear`), each within Q.4a's
tolerance of it (`reference_numerics.weight_only_tolerance`, checked in tests/test_formats.py and
tests/test_numerics_reference.py). Prepared once per linear at load."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.int_gemm import int_matmul
from runtime.reference_numerics import INT, QuantParams

# The tolerance (reference_numerics.BF16_TOLERANCE, TWO_DIGIT_TOLERANCE): its first term covers the
# bf16 kernels (bf16 rounding of x, scale, zero and result: 2^-9 each), the second the two-digit
# int8 kernel (x to within max|x| / 64516). Measured: under 2^-10 of the bound.
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
      bf16 logits alone moved SmolLM2's perplexity measurably; CHANGELOG, session 4): each row of x
      is written as
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
    acc1, acc2 = int_matmul(a1.to(torch.int8), w_t, False), int_matmul(a2.to(torch.int8), w_t, False)
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
