"""Per-channel treatment of linear inputs, chosen from calibrated per-channel ranges.

- Outlier channels: a few input channels with ranges far above the rest (the "massive
  activations" of the first token in LLMs) leave the integer GEMM and go through a small float
  side product; the int8 weight has those columns zeroed.
- SmoothQuant: s[k] = amax_x[k]^a / amax_w[k]^(1-a) moves the remaining outliers into the
  weights; the quantizer divides x by s, the stored weight is W * s.
- Rotation (`act_rotation`, mcq.rotation): then the channels are rotated by an orthogonal R, so
  that one per-tensor scale fits them all; the stored weight is (W * s) R^T.

Both are shared by a group of linears reading the same tensor (q/k/v, gate/up), so that tensor
is quantized once. With alpha "auto", each group picks the alpha from a fixed grid that minimizes
the squared error of its quantized outputs on the calibration data (summed over the batches
when the group's input is complete, before its weights are quantized: `mcq.pipeline`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from mcq import rotation
from mcq.calibrators import HISTOGRAM_METHODS, histogram_range
from mcq.observers import Observer, spec_qparams, spec_to_qp, weight_qparams
from runtime import numerics
from runtime.ir import Graph
from runtime.numerics import QuantParams

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
MAX_TOKENS_PER_BATCH = 512  # the alpha search looks at a bounded number of tokens per batch
MAX_OUTLIER_FRACTION = 0.01  # at most 1 % of a linear's input channels leave the integer GEMM

Weights = Callable[[str], torch.Tensor]


@dataclass
class ChannelPlan:
    """What happens to one group's input channels before per-tensor quantization."""

    outliers: torch.Tensor  # int64 channel indices, sorted; may be empty
    smooth: torch.Tensor | None  # float32 [channels], 1 at outlier channels
    rotation: tuple[torch.Tensor, torch.Tensor] | None = None  # Kronecker factors (mcq.rotation)

    def split_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight for the integer GEMM: smoothed, outlier columns zeroed, rotated; float outlier
        columns)."""
        w = w.to(torch.float32)
        cols = w[:, self.outliers].contiguous()
        main = w * self.smooth if self.smooth is not None else w.clone()
        main[:, self.outliers] = 0.0
        if self.rotation is not None:  # each row w -> R w, so (W R^T)(R x) = W x
            main = (main.to(torch.float64) @ rotation.matrix(self.rotation).t()).to(torch.float32)
        return main, cols

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """What the quantizer represents, at full width: outlier channels zeroed, x / smooth, rotated.
        Computed in float64 and rounded once to float32 (a statistic of calibration, which no
        CPU's float32 GEMM may move; the runtime's own float32 rotation is spec Q.2's)."""
        x = x.to(torch.float32).to(torch.float64).index_fill(-1, self.outliers, 0.0)
        if self.smooth is not None:
            x = x / self.smooth.to(torch.float64)
        if self.rotation is not None:
            x = numerics.rotate(x, (self.rotation[0].to(torch.float64), self.rotation[1].to(torch.float64)))
        return x.to(torch.float32)

    def input_qparams(self, obs: Observer, spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor parameters of x / s over the non-outlier channels, exact from their ranges
        (from the transformed tensor's histogram for histogram methods and rotated inputs)."""
        assert obs.min is not None and obs.max is not None
        if obs.transformed is not None:
            if spec["method"] in HISTOGRAM_METHODS:
                lo_h, hi_h = histogram_range(obs.transformed, spec["method"], spec["nbits"], obs.percentile)
            else:  # min / max methods: the histogram's range is the exact one (it covers zero too)
                lo_h, hi_h = obs.transformed.lo, obs.transformed.hi
            return spec_qparams(torch.tensor(lo_h) * obs.clip, torch.tensor(hi_h) * obs.clip, spec)
        if self.rotation is not None:
            raise RuntimeError("a rotated input's range needs the histogram of the transformed input (mcq.pipeline)")
        keep = torch.ones_like(obs.min, dtype=torch.bool)
        keep[self.outliers] = False
        s = self.smooth if self.smooth is not None else torch.ones_like(obs.min)
        lo, hi = (obs.min / s)[keep], (obs.max / s)[keep]
        return spec_qparams(lo.min() * obs.clip, hi.max() * obs.clip, spec)


def groups(graph: Graph, qformat: dict[str, Any]) -> list[list[str]]:
    """Linears with a per-channel input treatment, grouped by the tensor they read."""
    out: dict[Any, list[str]] = {}
    for n in graph.nodes:
        entry = qformat["nodes"].get(n.qkey) if n.qkey else None
        x = entry["inputs"].get("x", {}) if entry else {}
        if entry and entry.get("weight") and ("smooth" in x or "outliers" in x or "rotation" in x):
            out.setdefault(n.args[0], []).append(n.qkey)  # type: ignore[arg-type]
    return list(out.values())


def outlier_channels(obs: Observer, threshold: float) -> torch.Tensor:
    """Channels whose abs-max exceeds `threshold` x the median channel's (capped at 1 %)."""
    assert obs.min is not None and obs.max is not None
    amax = torch.maximum(obs.min.abs(), obs.max.abs())
    if threshold <= 0:
        return torch.zeros(0, dtype=torch.long)
    limit = threshold * amax.median().clamp(min=1e-8)
    cap = max(1, int(amax.numel() * MAX_OUTLIER_FRACTION))
    order = torch.argsort(amax, descending=True, stable=True)[:cap]
    return torch.sort(order[amax[order] > limit]).values


def smoothing_vector(obs: Observer, weights: list[torch.Tensor], alpha: float, outliers: torch.Tensor) -> torch.Tensor:
    assert obs.min is not None and obs.max is not None
    act = torch.maximum(obs.min.abs(), obs.max.abs()).to(torch.float64)
    wmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).to(torch.float64)
    # float64 powers rounded once to float32: float32 pow differs by an ulp between vectorized
    # implementations (CPU capabilities), which would move every smoothed weight
    s = act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)
    s = torch.where((act > 0) & (wmax > 0), s, torch.ones_like(s)).to(torch.float32)
    s[outliers] = 1.0
    return s


def _plan(obs: Observer, weights: list[torch.Tensor], spec: dict[str, Any], alpha: float | None,
          threshold: float) -> ChannelPlan:
    threshold = float(spec.get("outlier_threshold", threshold))  # per-node overrides set their own
    idx = outlier_channels(obs, threshold) if "outliers" in spec else torch.zeros(0, dtype=torch.long)
    smooth = smoothing_vector(obs, weights, alpha, idx) if "smooth" in spec and alpha is not None else None
    rot = rotation.factors(weights[0].shape[1]) if "rotation" in spec else None
    return ChannelPlan(idx, smooth, rot)


def group_plan(members: list[str], qformat: dict[str, Any], observers: dict[tuple[str, str], Observer],
               weight: Weights, alpha: float | None, threshold: float) -> ChannelPlan:
    """The ChannelPlan of one group (linears reading the same tensor, `groups` order)."""
    spec = qformat["nodes"][members[0]]["inputs"]["x"]
    return _plan(observers[(members[0], "x")], [weight(k) for k in members], spec, alpha, threshold)


def transformed_input(x: torch.Tensor, plan: ChannelPlan) -> torch.Tensor:
    """The tensor a linear's per-tensor input quantizer sees: outlier channels removed, x / smooth
    (rotated inputs: `plan.transform`, the outlier channels zeroed before the rotation)."""
    if plan.rotation is not None:
        return plan.transform(x)
    keep = torch.ones(x.shape[-1], dtype=torch.bool)
    keep[plan.outliers] = False
    x = x.to(torch.float32)
    if plan.smooth is not None:
        x = x / plan.smooth
    return x[..., keep]


def _fake_quantized_weight(w: torch.Tensor, wspec: dict[str, Any]) -> torch.Tensor:
    scale, zp = weight_qparams(w, wspec)
    return numerics.fake_quantize(w, spec_to_qp(wspec, scale, zp))


def search_alpha(members: list[str], qformat: dict[str, Any], obs: Observer, weights: list[torch.Tensor],
                 inputs: Iterable[torch.Tensor], threshold: float,
                 reduce: Callable[[list[torch.Tensor]], None] | None = None) -> float:
    """The grid alpha with the least output error of one group (linears `members`, float
    `weights`) on its calibration `inputs`, one per batch. `reduce` sums the errors over the
    processes of a distributed calibration."""
    spec = qformat["nodes"][members[0]]["inputs"]["x"]
    ws = [w.to(torch.float32) for w in weights]
    cands = []
    for a in ALPHA_GRID:
        p = _plan(obs, ws, spec, a, threshold)
        split = [p.split_weight(w) for w in ws]
        wq = [_fake_quantized_weight(main, qformat["nodes"][k]["weight"]) for (main, _), k in zip(split, members)]
        scale, zp = p.input_qparams(obs, spec)
        cands.append((p, spec_to_qp(spec, scale, zp), wq, [cols for _, cols in split]))
    errors = torch.zeros(len(ALPHA_GRID), dtype=torch.float64)
    for x in inputs:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)[:MAX_TOKENS_PER_BATCH]
        refs = [x @ w.t() for w in ws]
        for i, (p, qp, wq, cols) in enumerate(cands):
            xq = numerics.fake_quantize(p.transform(x), qp)
            side = x[:, p.outliers]
            errors[i] += sum(float((xq @ w.t() + side @ c.t() - r).pow(2).sum()) for w, c, r in zip(wq, cols, refs))
    if reduce is not None:
        reduce([errors])
    return ALPHA_GRID[int(torch.argmin(errors))]


# factors of the calibrated range that `act_range_search: output_mse` tries: every 0.05 from 1.0
# down to 0.5, then every 0.01 within 0.04 of the best of those
ACT_CLIP_GRID = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
ACT_CLIP_FINE = 0.01


def _output_error(inputs: list[torch.Tensor], weights: list[torch.Tensor],
                  transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[QuantParams], float]:
    """err(qp): the squared error that quantizing the (transformed) input with `qp` adds to the
    outputs of the linears with (transformed, float) `weights`, summed over the calibration tokens:
    sum_k ||(Q(x) - x) W_k^T||^2, through the Gram matrix sum_k W_k^T W_k when that is cheaper.
    In float64, so that no CPU's summation order can change which candidate wins."""
    xs = [transform(x.reshape(-1, x.shape[-1])) for x in inputs]
    w = torch.cat([wk.to(torch.float64) for wk in weights])
    gram = w.shape[0] > w.shape[1]
    m = w.t() @ w if gram else w

    def err(qp: QuantParams) -> float:
        total = 0.0
        for x in xs:
            e = (numerics.fake_quantize(x, qp) - x).to(torch.float64)
            total += float(((e @ m) * e).sum()) if gram else float((e @ m.t()).pow(2).sum())
        return total
    return err


def search_clip(plan: ChannelPlan | None, obs: Observer, spec: dict[str, Any], weights: list[torch.Tensor],
                inputs: list[torch.Tensor], reduce: Callable[[list[torch.Tensor]], None] | None = None) -> float:
    """The factor of the calibrated range of a per-tensor linear input (`obs`, `spec`; its group's
    channel `plan` or None) whose quantized input gives the least output error of the linears with
    float `weights` reading it (`_output_error`) over the calibration `inputs`, one per batch:
    ACT_CLIP_GRID, then steps of ACT_CLIP_FINE around the best. Ties go to the wider range.
    `reduce` sums the errors over the processes of a distributed calibration."""
    if plan is not None:
        weights = [plan.split_weight(w)[0] for w in weights]
        transform: Callable[[torch.Tensor], torch.Tensor] = plan.transform
    else:
        weights = [w.to(torch.float32) for w in weights]
        transform = lambda x: x.to(torch.float32)  # noqa: E731
    err = _output_error(inputs, weights, transform)
    saved = obs.clip

    def errors(factors: list[float]) -> torch.Tensor:
        out = []
        for f in factors:
            obs.clip = f
            scale, zp = plan.input_qparams(obs, spec) if plan is not None else obs.qparams(spec)
            out.append(err(spec_to_qp(spec, scale, zp)))
        t = torch.tensor(out, dtype=torch.float64)
        if reduce is not None:
            reduce([t])
        return t

    try:
        coarse = list(ACT_CLIP_GRID)
        best = coarse[int(torch.argmin(errors(coarse)))]
        fine = [round(best + ACT_CLIP_FINE * i, 2) for i in range(4, -5, -1)]
        fine = [f for f in fine if 0.5 <= f <= 1.0]
        return fine[int(torch.argmin(errors(fine)))]
    finally:
        obs.clip = saved
