"""Range selection from a streamed histogram: PERCENTILE, ENTROPY (KL) and MSE methods.

Histograms have a fixed number of bins over [lo, hi]; when a batch widens the range, the old
counts move to the new bins by their centers (so merged histograms stay within one bin of a
one-pass histogram). No method stores activations.
"""
from __future__ import annotations

import torch

BINS = 2048

HISTOGRAM_METHODS = ("PERCENTILE_SYM", "PERCENTILE_ASYM", "ENTROPY_SYM", "ENTROPY_ASYM", "MSE_SYM")


class Histogram:
    """Counts of a tensor's values over [lo, hi] in BINS equal bins (float64 counts)."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.lo = self.hi = 0.0
        self.counts = torch.zeros(bins, dtype=torch.float64)

    def _rebin(self, lo: float, hi: float) -> None:
        if self.counts.sum() > 0:
            width = (self.hi - self.lo) / self.bins
            centers = self.lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
            idx = ((centers - lo) / (hi - lo) * self.bins).floor().clamp(0, self.bins - 1).long()
            counts = torch.zeros(self.bins, dtype=torch.float64)
            counts.index_add_(0, idx, self.counts)
            self.counts = counts
        self.lo, self.hi = lo, hi

    def widen(self, lo: float, hi: float) -> None:
        """Cover [lo, hi] (a range that contains the current one): counts move to the new bins."""
        if (lo, hi) != (self.lo, self.hi):
            self._rebin(lo, hi)

    def step(self, xmin: float, xmax: float, x: torch.Tensor | None = None) -> None:
        """One batch whose values span [xmin, xmax]: widen to cover it (and zero), then count `x`
        (float64, flat) if given. Distributed calibration replays the steps of batches that other
        processes counted (mcq.distributed.replay_histogram)."""
        lo, hi = min(self.lo, xmin, 0.0), max(self.hi, xmax, 0.0)
        if hi <= lo:
            hi = lo + 1e-12
        self.widen(lo, hi)
        if x is not None:
            self.counts += torch.histc(x, bins=self.bins, min=self.lo, max=self.hi)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1).to(torch.float64)
        self.step(float(x.min()), float(x.max()), x)

    def edges(self) -> torch.Tensor:
        return torch.linspace(self.lo, self.hi, self.bins + 1, dtype=torch.float64)

    def centers(self) -> torch.Tensor:
        e = self.edges()
        return (e[:-1] + e[1:]) / 2


def _abs_histogram(h: Histogram) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, upper edges) of |x| folded onto [0, max(|lo|, hi)], BINS bins."""
    amax = max(-h.lo, h.hi)
    c = h.centers().abs()
    idx = (c / amax * h.bins).floor().clamp(0, h.bins - 1).long()
    counts = torch.zeros(h.bins, dtype=torch.float64).index_add_(0, idx, h.counts)
    upper = torch.linspace(0, amax, h.bins + 1, dtype=torch.float64)[1:]
    return counts, upper


def percentile_range(h: Histogram, percentile: float, symmetric: bool) -> tuple[float, float]:
    q = percentile / 100.0
    if symmetric:
        counts, upper = _abs_histogram(h)
        cdf = counts.cumsum(0) / counts.sum()
        amax = float(upper[int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)))])
        return -amax, amax
    cdf = h.counts.cumsum(0) / h.counts.sum()
    e = h.edges()
    lo_i = int(torch.searchsorted(cdf, torch.tensor([1 - q], dtype=torch.float64)))
    hi_i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)))
    return float(e[lo_i]), float(e[min(hi_i + 1, h.bins)])


def mse_range(h: Histogram, qmax: int) -> tuple[float, float]:
    """Symmetric clip that minimizes the expected squared error of quantizing the histogram."""
    counts, upper = _abs_histogram(h)
    centers = upper - (upper[1] - upper[0]) / 2 if len(upper) > 1 else upper
    candidates = upper[h.bins // 32 :: 8]
    scale = candidates[:, None] / qmax
    q = torch.clamp(torch.floor(centers[None, :] / scale + 0.5), max=qmax)  # |x| >= 0
    err = ((q * scale - centers[None, :]) ** 2 * counts[None, :]).sum(dim=1)
    amax = float(candidates[int(torch.argmin(err))])
    return -amax, amax


def _kl_threshold(counts: torch.Tensor, levels: int) -> int:
    """TensorRT-style entropy calibration: the bin count i whose clipped, `levels`-quantized
    distribution is closest in KL divergence to the reference; returns i (bins kept)."""
    n = counts.numel()
    best_i, best_kl = n, float("inf")
    for i in range(levels, n + 1, max(1, (n - levels) // 256)):
        p = counts[:i].clone()
        p[i - 1] += counts[i:].sum()  # clipped mass goes to the last kept bin
        nonzero = (counts[:i] > 0).to(torch.float64)
        # merge i bins into `levels` groups, spread each group's mass over its non-empty bins
        group = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, counts[:i])
        filled = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, nonzero)
        q = torch.where(nonzero > 0, (mass / filled.clamp(min=1))[group], torch.zeros_like(p))
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        p, q = p / ps, q / qs
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def entropy_range(h: Histogram, nbits: int, symmetric: bool) -> tuple[float, float]:
    levels = 2 ** (nbits - 1)
    if symmetric:
        counts, upper = _abs_histogram(h)
        amax = float(upper[_kl_threshold(counts, levels) - 1])
        return -amax, amax
    # asymmetric: each side of zero gets its own threshold
    e, width = h.edges(), (h.hi - h.lo) / h.bins
    zero = int(round(-h.lo / width)) if width > 0 else 0
    pos, neg = h.counts[zero:], h.counts[:zero].flip(0)
    hi = float(e[zero + _kl_threshold(pos, levels)]) if pos.sum() > 0 and pos.numel() >= levels else h.hi
    lo = float(e[zero - _kl_threshold(neg, levels)]) if neg.sum() > 0 and neg.numel() >= levels else h.lo
    return lo, hi


def histogram_range(h: Histogram, method: str, nbits: int, percentile: float) -> tuple[float, float]:
    symmetric = method.endswith("_SYM")
    if method.startswith("PERCENTILE"):
        return percentile_range(h, percentile, symmetric)
    if method.startswith("ENTROPY"):
        return entropy_range(h, nbits, symmetric)
    if method == "MSE_SYM":
        return mse_range(h, 2 ** (nbits - 1) - 1)
    raise ValueError(f"{method} is not a histogram method")
