"""Calibrators: streaming range statistics per quantizer. None of them stores activations."""
from __future__ import annotations

import math

import torch

from mcq.calibrators import HISTOGRAM_METHODS, Histogram, histogram_range
from runtime import numerics


class Observer:
    """Running statistics of one tensor role; `axis` keeps one statistic per index of that axis.

    Per-tensor observers of a histogram method (PERCENTILE, ENTROPY, MSE) also stream a histogram;
    `transformed` holds the histogram of the tensor after its per-channel treatment (smoothing,
    outlier channels), filled by a second calibration pass when one is needed.
    """

    def __init__(self, axis: int | None = None, method: str = "MINMAX_ASYM", percentile: float = 99.99) -> None:
        self.axis, self.method, self.percentile = axis, method, percentile
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.histogram = Histogram() if axis is None and method in HISTOGRAM_METHODS else None
        self.transformed: Histogram | None = None

    def _reduce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to(torch.float32)
        if self.axis is None:
            return x.min(), x.max()
        flat = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        return flat.min(dim=1).values, flat.max(dim=1).values

    def update(self, x: torch.Tensor) -> None:
        lo, hi = self._reduce(x)
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)
        if self.histogram is not None:
            self.histogram.update(x)

    def qparams(self, method: str, nbits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 scale, int32 zero point) from the observed range."""
        if self.min is None or self.max is None:
            raise RuntimeError("observer saw no data: the calibration data never reached this quant point")
        if self.histogram is not None and method in HISTOGRAM_METHODS:
            lo, hi = histogram_range(self.histogram, method, nbits, self.percentile)
            return range_to_qparams(torch.tensor(lo), torch.tensor(hi), method, nbits)
        return range_to_qparams(self.min, self.max, method, nbits)


def range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, method: str, nbits: int) -> tuple[torch.Tensor, torch.Tensor]:
    symmetric = method.endswith("_SYM")
    qmin, qmax = numerics.qrange(nbits, symmetric)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (amax / qmax).clamp(min=tiny)
        return scale.to(torch.float32), torch.zeros_like(scale, dtype=torch.int32)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # zero is always representable
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=tiny).to(torch.float32)
    zp = numerics.round_half_away_from_zero(qmin - lo / scale)
    return scale, torch.clamp(zp, qmin, qmax).to(torch.int32)


def weight_qparams(w: torch.Tensor, method: str, granularity: str, nbits: int,
                   percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric parameters of a weight, per output channel (axis 0) or per tensor.

    AMAX_SYM: abs-max; PERCENTILE_SYM: the `percentile` of |w| (exact, per row); MSE_SYM: the clip
    among 1.00, 0.99, ..., 0.50 x abs-max with the least squared rounding+clipping error.
    """
    rows = w.detach().to(torch.float32).reshape(w.shape[0], -1) if granularity == "channel" \
        else w.detach().to(torch.float32).reshape(1, -1)
    a = rows.abs()
    amax = a.amax(dim=1)
    if method == "PERCENTILE_SYM":
        k = max(1, min(a.shape[1], math.ceil(percentile / 100.0 * a.shape[1])))
        amax = torch.kthvalue(a, k, dim=1).values
    elif method == "MSE_SYM":
        qmax = 2 ** (nbits - 1) - 1
        best, best_err = amax.clone(), torch.full_like(amax, float("inf"))
        for f in torch.linspace(1.0, 0.5, 51):
            clip = (amax * f).clamp(min=torch.finfo(torch.float32).tiny)
            scale = (clip / qmax)[:, None]
            err = ((numerics.round_half_away_from_zero(rows / scale).clamp(-qmax, qmax) * scale - rows) ** 2).sum(1)
            better = err < best_err
            best, best_err = torch.where(better, clip, best), torch.where(better, err, best_err)
        amax = best
    elif method != "AMAX_SYM":
        raise ValueError(f"weight calibration method {method} is not one of AMAX_SYM, PERCENTILE_SYM, MSE_SYM")
    scale, zp = range_to_qparams(-amax, amax, "AMAX_SYM", nbits)
    return (scale, zp) if granularity == "channel" else (scale.reshape(()), zp.reshape(()))
