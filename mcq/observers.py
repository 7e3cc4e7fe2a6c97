"""Calibrators: streaming range statistics per quantizer. None of them stores activations."""
from __future__ import annotations

import math
from typing import Any

import torch

from mcq.calibrators import HISTOGRAM_METHODS, Histogram, histogram_range
from runtime import numerics
from runtime.numerics import QuantParams


class Observer:
    """Running statistics of one tensor role; `axis` keeps one statistic per index of that axis.

    Per-tensor observers of a histogram method (PERCENTILE, ENTROPY, MSE) also stream a histogram;
    `transformed` holds the histogram of the tensor after its per-channel treatment (smoothing,
    outlier channels, rotation), filled by a second calibration pass when one is needed.
    """

    def __init__(self, axis: int | None = None, method: str = "MINMAX_ASYM", percentile: float = 99.99,
                 heads: int | None = None) -> None:
        # heads: `axis` is laid out as batch x heads (a bmm operand); statistics are kept per head
        self.axis, self.method, self.percentile, self.heads = axis, method, percentile, heads
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.histogram = Histogram() if axis is None and method in HISTOGRAM_METHODS else None
        self.transformed: Histogram | None = None
        # factor applied to the calibrated range (lo, hi) of a per-tensor input: 1.0, or the one
        # an output-error search chose (`act_range_search`, mcq.channels.search_clip)
        self.clip = 1.0

    def _reduce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to(torch.float32)
        if self.axis is None:
            return x.min(), x.max()
        if self.heads:
            x = x.movedim(self.axis, 0)
            flat = x.reshape(-1, self.heads, *x.shape[1:]).transpose(0, 1).reshape(self.heads, -1)
            return flat.min(dim=1).values, flat.max(dim=1).values
        flat = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        return flat.min(dim=1).values, flat.max(dim=1).values

    def update(self, x: torch.Tensor) -> None:
        lo, hi = self._reduce(x)
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)
        if self.histogram is not None:
            self.histogram.update(x)

    def qparams(self, spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 scale, int32 zero point) of a quant spec from the observed range."""
        if self.min is None or self.max is None:
            raise RuntimeError("observer saw no data: the calibration data never reached this quant point")
        method, nbits = spec["method"], int(spec["nbits"])
        if self.histogram is not None and method in HISTOGRAM_METHODS:
            lo, hi = histogram_range(self.histogram, method, nbits, self.percentile)
            return spec_qparams(torch.tensor(lo) * self.clip, torch.tensor(hi) * self.clip, spec)
        return spec_qparams(self.min * self.clip, self.max * self.clip, spec)


def spec_qparams(lo: torch.Tensor, hi: torch.Tensor, spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameters of `spec`'s format for the range [lo, hi]: an integer grid (range_to_qparams),
    fp8 scaled so the abs-max lands on 448, or the unit scale of a bf16 cast."""
    if spec["dtype"] == "fp8_e4m3fn":
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (amax / numerics.FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny).to(torch.float32)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    if spec["dtype"] == "bfloat16":
        return torch.ones_like(lo, dtype=torch.float32), torch.zeros_like(lo, dtype=torch.int32)
    method = spec["method"] if not spec.get("symmetric") else "AMAX_SYM"
    return range_to_qparams(lo, hi, method, int(spec["nbits"]))


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


def weight_rows(w: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """The weight as [units, elements]: one row per scale (output channel, group, or the tensor)."""
    w = w.detach().to(torch.float32)
    gran = spec["granularity"]
    if gran == "channel":
        return w.reshape(w.shape[0], -1)
    if gran == "group":  # a shorter last group is zero-padded (zeros never raise an abs-max)
        g = int(spec["group_size"])
        return torch.nn.functional.pad(w, (0, -w.shape[1] % g)).reshape(-1, g)
    return w.reshape(1, -1)


def scale_shape(w: torch.Tensor, spec: dict[str, Any]) -> tuple[int, ...]:
    gran = spec["granularity"]
    if gran == "channel":
        return (w.shape[0],)
    if gran == "group":
        return (w.shape[0], -(-w.shape[1] // int(spec["group_size"])))
    return ()


def _rounding_error(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Per row: squared error of quantizing `rows` with the parameters of the range [lo, hi]."""
    scale, zp = spec_qparams(lo, hi, spec)
    qp = spec_to_qp({**spec, "granularity": "channel", "axis": 0}, scale, zp)  # one scale per row
    # squares of float32 differences are exact in float64, and the float64 sum rounds at 1e-16:
    # no CPU's summation order can change which clip wins
    return ((numerics.fake_quantize(rows, qp) - rows).to(torch.float64) ** 2).sum(1)


def weight_qparams(w: torch.Tensor, spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameters of a weight for its spec (granularity tensor, channel or group).

    AMAX_SYM: abs-max; PERCENTILE_SYM: the `percentile` of |w| (exact, per row); MSE_SYM: the clip
    among 1.00, 0.99, ..., 0.50 x abs-max with the least squared rounding+clipping error;
    MINMAX_ASYM / MSE_ASYM: the same on [min, max] with a zero point (weight-only linears).
    """
    method = spec["method"]
    symmetric = method.endswith("_SYM")
    spec = {**spec, "symmetric": symmetric, "method": "AMAX_SYM" if symmetric else "MINMAX_ASYM"}
    rows = weight_rows(w, spec)
    if symmetric:
        a = rows.abs()
        hi = a.amax(dim=1)
        if method == "PERCENTILE_SYM":
            k = max(1, min(a.shape[1], math.ceil(float(spec.get("percentile", 99.99)) / 100.0 * a.shape[1])))
            hi = torch.kthvalue(a, k, dim=1).values
        lo = -hi
    else:
        lo, hi = rows.amin(dim=1).clamp(max=0.0), rows.amax(dim=1).clamp(min=0.0)
    if method.startswith("MSE"):
        tiny = torch.finfo(torch.float32).tiny
        best, best_err = torch.ones_like(hi), torch.full_like(hi, float("inf"))
        for f in torch.linspace(1.0, 0.5, 51):
            err = _rounding_error(rows, (lo * f).clamp(max=-tiny), (hi * f).clamp(min=tiny), spec)
            better = err < best_err
            best, best_err = torch.where(better, f, best), torch.where(better, err, best_err)
        lo, hi = lo * best, hi * best
    elif method not in ("AMAX_SYM", "PERCENTILE_SYM", "MINMAX_ASYM"):
        raise ValueError(f"weight calibration method {method} is not one of AMAX_SYM, PERCENTILE_SYM, MSE_SYM, "
                         "MINMAX_ASYM, MSE_ASYM")
    scale, zp = spec_qparams(lo, hi, spec)
    shape = scale_shape(w, spec)
    return scale.reshape(shape), zp.reshape(shape)


def spec_to_qp(spec: dict[str, Any], scale: torch.Tensor, zp: torch.Tensor) -> QuantParams:
    """QuantParams of a spec with these parameters, parsed by the runtime's own reader (so the
    toolkit's simulation and the runtime cannot read a spec differently); no per-channel treatment."""
    from runtime.lower import quant_params

    values = {"#scale": scale, "#zero_point": zp}
    plain = {**spec, "scale": "#scale", "zero_point": "#zero_point", "smooth": None, "outliers": None,
             "rotation": None}
    if plain.get("granularity") == "rotated_tensor":
        plain["granularity"] = "tensor"  # the rotation is part of the per-channel treatment
    return quant_params(plain, values.__getitem__)
