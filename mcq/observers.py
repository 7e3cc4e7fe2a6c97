"""Calibrators: streaming range statistics per quantizer. None of them stores activations."""
from __future__ import annotations

import torch

from runtime import numerics


class Observer:
    """Running statistics of one tensor role; `axis` keeps one statistic per index of that axis."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

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

    def qparams(self, method: str, nbits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 scale, int32 zero point) from the observed range."""
        if self.min is None or self.max is None:
            raise RuntimeError("observer saw no data: the calibration data never reached this quant point")
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


def weight_qparams(w: torch.Tensor, method: str, granularity: str, nbits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (axis 0) or per-tensor abs-max parameters of a weight."""
    obs = Observer(axis=0 if granularity == "channel" else None)
    obs.update(w)
    return obs.qparams(method, nbits)
