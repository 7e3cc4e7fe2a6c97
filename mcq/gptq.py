"""GPTQ: weight rounding that compensates each column's error in the columns not yet quantized.

Frantar et al., "GPTQ" (2022): with H = 2 X^T X over the calibration inputs of a linear, quantize
the weight one input column at a time and spread the rounding error of column i over columns
> i through the upper Cholesky factor of H^-1. Here the scales stay the ones calibrated from the
weight before rounding (static groups), so round-to-nearest is the same spec with other rounded
values. Hessians come from the float model's inputs at each linear.

Sequential GPTQ (`gptq_sequential`, mcq.sequential) fits each weight to the float model's output
from the input it really gets in the quantized model (upstream error and its own activation
quantization included): with x the float input and x~ the quantized one, min ||W x - Q x~||^2
equals min ||W* x~ - Q x~||^2 plus a constant, where W* = W E[x x~^T] E[x~ x~^T]^-1 (the normal
equations make the residual orthogonal to x~), so the scales are calibrated on W* and GPTQ
rounds W* with the Hessian of x~.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime import numerics
from runtime.numerics import QuantParams

BLOCK = 128  # columns updated together (the lazy batch update of the paper)


class Hessian:
    """Streaming 2/n X^T X of one linear's input, in float64 (every product of two float32 values
    is exact in float64; the sums round at 1e-16, so no CPU's summation order moves GPTQ)."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).to(torch.float64)
        xtx = x.t() @ x
        self.sum = xtx if self.sum is None else self.sum + xtx
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        if self.sum is None:
            raise RuntimeError("GPTQ: no calibration input reached this linear")
        return 2.0 * self.sum / self.count


class CrossHessian:
    """Streaming 2/n sums of x~ x~^T and x x~^T over pairs (x float input, x~ quantized input)."""

    def __init__(self) -> None:
        self.quant = Hessian()
        self.cross: torch.Tensor | None = None

    def update(self, x: torch.Tensor, xq: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).to(torch.float64)
        xq = xq.detach().reshape(-1, xq.shape[-1]).to(torch.float32)
        self.quant.update(xq)
        xxq = x.t() @ xq.to(torch.float64)
        self.cross = xxq if self.cross is None else self.cross + xxq

    def problem(self, damp: float, fit_damp: float, act_order: bool | None = None) -> Problem:
        assert self.cross is not None, "CrossHessian.problem before any update"
        return Problem(self.quant.value(), damp, 2.0 * self.cross / self.quant.count, fit_damp, act_order)


@dataclass
class Problem:
    """What GPTQ needs for one linear: the Hessian of the input its weight multiplies, the
    dampening, and for sequential GPTQ the cross term E[x x~^T] with the float model's input and
    the dampening of the fit to it; `act_order` as `gptq_weight` takes it."""

    hessian: torch.Tensor
    damp: float = 0.01
    cross: torch.Tensor | None = None
    fit_damp: float = 1.0
    act_order: bool | None = None

    def target(self, w: torch.Tensor) -> torch.Tensor:
        """The float weight GPTQ rounds: `w`, or its fit (`fit_target`) in sequential GPTQ."""
        return w if self.cross is None else fit_target(w, self.hessian, self.cross, self.fit_damp)

    def transformed(self, smooth: torch.Tensor | None, outliers: torch.Tensor,
                    rotation: torch.Tensor | None = None) -> Problem:
        """The problem in the integer GEMM's input space: x / smooth, outlier channels removed
        (rows and columns zeroed, so GPTQ treats them as dead and never moves error into them),
        then rotated by the full matrix `rotation` (mcq.rotation.matrix), if any."""
        cross = None if self.cross is None else transformed(self.cross, smooth, outliers, rotation)
        return Problem(transformed(self.hessian, smooth, outliers, rotation), self.damp, cross, self.fit_damp,
                       self.act_order)


def transformed(hessian: torch.Tensor, smooth: torch.Tensor | None, outliers: torch.Tensor,
                rotation: torch.Tensor | None = None) -> torch.Tensor:
    """A second-moment matrix of the input the integer GEMM sees: x / smooth, outlier channels
    removed (their rows and columns zeroed), then rotated (R H R^T)."""
    h = hessian.clone()
    if smooth is not None:
        s = smooth.to(torch.float64)
        h = h / (s[:, None] * s[None, :])
    h[outliers, :] = 0.0
    h[:, outliers] = 0.0
    if rotation is not None:
        h = rotation @ h @ rotation.t()
    return h


def _column_quantizer(qp: QuantParams, rows: int):
    """f(column values [rows], column index) -> the values on the weight's grid."""
    def column(p: torch.Tensor, col: int) -> torch.Tensor:
        if qp.group_size:
            return p[:, col // qp.group_size]
        return p.reshape(1).expand(rows) if qp.axis is None else p

    def params(col: int) -> QuantParams:
        return QuantParams(column(qp.scale, col), column(qp.zero_point, col), qp.qmin, qp.qmax, axis=0,
                           kind=qp.kind)

    return lambda values, col: numerics.fake_quantize(values, params(col))


def fit_target(w: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, fit_damp: float = 1.0) -> torch.Tensor:
    """The float weight that sequential GPTQ rounds: W* = W + W (cross - H)(H + fit_damp)^-1, the
    fit of the float outputs from the quantized inputs. Its own dampening (x mean diag H)
    keeps the fit from following the calibration tokens' noise (exact, W cross H^-1, as
    fit_damp -> 0). Dead input channels stay at 0."""
    weight = w.to(torch.float64)
    h = hessian.to(torch.float64).clone()
    cols = h.shape[0]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    c = cross.to(torch.float64) - hessian.to(torch.float64)
    c[:, dead] = 0.0
    c[dead, :] = 0.0
    h += fit_damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    out = weight + weight @ torch.cholesky_solve(c.t(), torch.linalg.cholesky(h)).t()
    out[:, dead] = 0.0
    return out.to(torch.float32)


def gptq_weight(w: torch.Tensor, qp: QuantParams, hessian: torch.Tensor, damp: float = 0.01,
                act_order: bool | None = None) -> torch.Tensor:
    """The weight [out, in] with GPTQ-rounded values on `qp`'s grid (quantize() of it gives the
    stored integers). `damp` x mean(diag H) is added to the diagonal for a stable inverse.
    `act_order`: columns in order of input energy (None: for group scales only).

    The error feedback runs in float64: each column's rounding depends on every update before it,
    so float32 updates (whose BLAS rounding differs between CPUs) would round other values on
    another machine; each column is rounded from its float32 value, as the weight would be."""
    weight = w.to(torch.float32).to(torch.float64)
    rows, cols = weight.shape
    h = hessian.to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    # activation order: columns with the largest input energy first, while the most columns are
    # left to absorb their error; each column keeps its own (static) scale. By default for group
    # scales only: on SmolLM2 W8A8KV8 (per-channel int8) act order measured worse, on W8A16 better
    # (which is why that preset sets it; docs/benchmarks.md)
    if act_order is None:
        act_order = bool(qp.group_size)
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(cols)
    weight, h = weight[:, order], h[order][:, order]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    quant = _column_quantizer(qp, rows)
    out = torch.zeros_like(weight)
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        block = weight[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        hb = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q = quant(block[:, i].to(torch.float32), int(order[i1 + i])).to(torch.float64)
            out[:, i1 + i] = q
            err = (block[:, i] - q) / hb[i, i]
            block[:, i:] -= err[:, None] * hb[i, i:][None, :]
            errors[:, i] = err
        weight[:, i2:] -= errors @ hinv[i1:i2, i2:]
    return out[:, torch.argsort(order)].to(torch.float32)
