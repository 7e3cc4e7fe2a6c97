"""numerics' per-call functions with their parameters made once per input rank (qlevel 4).

A decode step of SmolLM2 W8A8KV8 quantizes or dequantizes 180 tensors and runs 30 integer Q.K^T
products; interpreted op by op, every broadcast view of a scale, cast of a zero point and
product of two scales made per call is a dispatched op of its own (a QBmm was 47 of them). These
do the same float32 operations, in the same order, on the same values as `numerics.quantize`,
`dequantize` and `qbmm`, so their results are equal bit for bit (tests/test_numerics.py; to the
spec's formulas, tests/test_numerics_reference.py), and leave everything else (groups,
smoothing, outliers, rotations, fp8, bf16, qlevel 3) to numerics.
"""
from __future__ import annotations

import torch

from runtime import numerics
from runtime.int_gemm import float32_gemm_is_exact, traced
from runtime.numerics import QuantParams

_HALF = torch.tensor(0.5)


def supported(qp: QuantParams) -> bool:
    """An int spec per tensor, channel or head without smoothing, outliers, rotation or groups."""
    return qp.kind == numerics.INT and not qp.group_size and qp.smooth is None and qp.outliers is None \
        and qp.rotation is None


def round_half_away_from_zero(v: torch.Tensor) -> torch.Tensor:
    """numerics.round_half_away_from_zero in three ops instead of five, equal for every float:
    v >= 0: trunc(fl(v + 0.5)) = floor(fl(|v| + 0.5)); v < 0: fl(v - 0.5) = -fl(|v| + 0.5)
    (round to nearest is symmetric) and trunc(-y) = -floor(y); zeros and NaN stay so."""
    return torch.trunc(v + torch.copysign(_HALF, v))


class Quantizer:
    """quantize / dequantize / centered values of one `supported` spec."""

    def __init__(self, qp: QuantParams) -> None:
        assert supported(qp), "prepared.Quantizer takes an int spec without groups or transforms"
        self.qp = qp
        self._params: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def view(self, x: torch.Tensor) -> tuple[int, ...]:
        """The shape numerics views x as (per head: the axis split into [-1, heads])."""
        qp = self.qp
        if not qp.per_head or qp.axis is None:
            return tuple(x.shape)
        axis = qp.axis % x.dim()
        return (*x.shape[:axis], -1, qp.scale.numel(), *x.shape[axis + 1 :])

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale, zero point as float32, zero point as int32), shaped as numerics broadcasts
        them against x (they depend on its rank only)."""
        got = self._params.get(x.dim())
        if got is None:
            scale, _ = numerics._broadcast(self.qp.scale, x, self.qp)
            zp, _ = numerics._broadcast(self.qp.zero_point, x, self.qp)
            got = (scale, zp.to(torch.float32), zp)
            if not any(traced(t) for t in got):  # a trace's values are not kept
                self._params[x.dim()] = got
        return got

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """clamp(round(x / s) + zp) in float32, in the view's shape."""
        scale, zp_f, _ = self.params(x)
        q = round_half_away_from_zero(x.to(torch.float32).reshape(self.view(x)) / scale) + zp_f
        return torch.clamp(q, self.qp.qmin, self.qp.qmax)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return self._grid(x).to(self.qp.storage_dtype).reshape(x.shape)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        scale, _, zp = self.params(q)
        return ((q.reshape(self.view(q)).to(torch.int32) - zp).to(torch.float32) * scale).reshape(q.shape)

    def centered(self, x: torch.Tensor) -> torch.Tensor:
        """quantize(x) - zp as float32: the integers numerics' float32 GEMM shortcut multiplies
        (exact: |q - zp| < 2^16), without the round trip through int8 and int32."""
        _, zp_f, _ = self.params(x)
        return (self._grid(x) - zp_f).reshape(x.shape)


class IntBmm:
    """numerics.qbmm at qlevel 4 for two `supported` int specs, where it takes its float32 GEMM
    shortcut (a fixed depth whose partial sums stay below 2^24); elsewhere numerics.qbmm."""

    def __init__(self, a_qp: QuantParams, b_qp: QuantParams, span: int) -> None:
        self.a, self.b = Quantizer(a_qp), Quantizer(b_qp)
        self.a_qp, self.b_qp, self.span = a_qp, b_qp, span
        self._scales: dict[int, torch.Tensor] = {}

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        depth = a.shape[-1]
        if not isinstance(depth, int) or not float32_gemm_is_exact(depth, self.span):
            return numerics.qbmm(a, self.a_qp, b, self.b_qp, False, self.span)
        acc = torch.bmm(self.a.centered(a), self.b.centered(b))
        scale = self._scales.get(acc.dim())
        if scale is None:
            sa, _ = numerics._broadcast(self.a_qp.scale, acc, self.a_qp)
            sb, _ = numerics._broadcast(self.b_qp.scale, acc, self.b_qp)
            scale = (sa * sb).to(torch.float32)
            if not traced(scale):
                self._scales[acc.dim()] = scale
        y = acc.reshape(self.b.view(acc)) * scale
        return y.reshape(acc.shape).to(a.dtype)
