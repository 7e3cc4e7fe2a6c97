"""Automatic mixed precision: choose which quant points stay in higher precision, under a budget.

Sensitivity is measured, not guessed: each quant point's local SQNR (its own quantization alone,
from float inputs; `mcq.report`) on held-out samples of the calibration data. Points are raised
to higher precision worst first:
- `max_fraction`: the worst ceil(fraction x points) are raised, no evaluation needed;
- `max_increase` (%): perplexity of the quantized model on held-out samples, against the float
  model's, is measured after raising 0, 1, 2, 4, 8, ... points, and the first count within the
  budget is kept (or the largest tried, with the budget reported as missed).
The result is a config whose `overrides` name the raised points; the choice and the measurements
go into the bundle's manifest (`quant.search`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mcq.config import Override, QuantConfig


@dataclass
class SearchResult:
    config: QuantConfig
    raised: list[str]  # qkeys kept in higher precision, worst first
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"raised": n, "perplexity": p}
    float_perplexity: float | None = None
    within_budget: bool = True

    def record(self, budget: dict[str, float]) -> dict[str, Any]:
        return {"budget": budget, "raised": self.raised, "trials": self.trials,
                "float_perplexity": self.float_perplexity, "within_budget": self.within_budget}


def raise_precision(qkey: str, entry: dict[str, Any]) -> Override:
    """The override that lifts one quant point one step: int4 weights -> int8 per channel; a
    quantized activation, Q.K^T operand, KV cache or embedding table -> float32."""
    kind = entry["kind"]
    if kind == "kv_cache":
        return Override(qkey, kind, (("kv_dtype", "float32"),))
    if kind == "embedding":
        return Override(qkey, kind, (("embedding_dtype", "float32"),))
    if kind == "linear" and not entry["inputs"] and (entry.get("weight") or {}).get("dtype") == "int4":
        return Override(qkey, kind, (("weight_dtype", "int8"), ("weight_granularity", "channel"), ("gptq", False)))
    return Override(qkey, kind, (("act_dtype", "float32"),))


def _worst_first(errors: list[Any]) -> list[str]:
    return [e.qkey for e in sorted(errors, key=lambda e: e.local_sqnr_db)]


def _counts(n: int) -> list[int]:
    """Trial sizes: 0, 1, 2, 4, ... and n itself."""
    return sorted({0, n} | {2 ** i for i in range(n.bit_length()) if 2 ** i <= n})


def _trial(quantize: Callable[[QuantConfig], Any], perplexity: Callable[[Any], float], cfg: QuantConfig,
           qformat: dict[str, Any], order: Sequence[str], n: int, trials: list[dict[str, Any]]) -> float:
    """Quantize with the worst `n` of `order` raised; its perplexity, also appended to `trials`."""
    p = perplexity(quantize(_with_raised(cfg, qformat, order[:n])))
    trials.append({"raised": n, "perplexity": p})
    return p


def _with_raised(cfg: QuantConfig, qformat: dict[str, Any], keys: Sequence[str]) -> QuantConfig:
    extra = tuple(raise_precision(k, qformat["nodes"][k]) for k in keys)
    return dataclasses.replace(cfg, overrides=cfg.overrides + extra)


def search(quantize: Callable[[QuantConfig], Any], cfg: QuantConfig, errors: list[Any], qformat: dict[str, Any],
           max_fraction: float | None = None, max_increase: float | None = None,
           perplexity: Callable[[Any], float] | None = None, float_perplexity: float | None = None,
           ) -> SearchResult:
    """`errors`: report.NodeError of the uniformly quantized model; `quantize(cfg)` returns a
    Quantized; `perplexity(quantized)` measures it (needed with `max_increase`)."""
    if (max_fraction is None) == (max_increase is None):
        raise ValueError("give exactly one budget: max_fraction (of quant points) or max_increase (%)")
    order = _worst_first(errors)
    if max_fraction is not None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction: {max_fraction!r} is not in [0, 1]")
        raised = order[: math.ceil(max_fraction * len(order))]
        return SearchResult(_with_raised(cfg, qformat, raised), raised)
    assert perplexity is not None and float_perplexity is not None and max_increase is not None
    limit = float_perplexity * (1 + max_increase / 100.0)
    trials: list[dict[str, Any]] = []
    best = 0
    for n in _counts(len(order)):
        p = _trial(quantize, perplexity, cfg, qformat, order, n, trials)
        best = n
        if p <= limit:
            break
    within = trials[-1]["perplexity"] <= limit
    return SearchResult(_with_raised(cfg, qformat, order[:best]), order[:best], trials, float_perplexity, within)


# A trial must beat the uniform model by this much to be suggested. On SmolLM2 W8A8KV8 a set that
# measured a hair lower on the 512 report tokens measured higher on the held-out text (CHANGELOG,
# session 10): gains that small are the samples' noise, not the overrides'.
MIN_GAIN = 0.005


def lowest(quantize: Callable[[QuantConfig], Any], cfg: QuantConfig, errors: list[Any], qformat: dict[str, Any],
           perplexity: Callable[[Any], float], top: int, progress: Callable[[str], None] | None = None,
           min_gain: float = MIN_GAIN) -> SearchResult:
    """The report's measured suggestion (`mcq report --trials`): the worst 1, 2, 4, ... `top`
    points by local SQNR raised, each set quantized and its perplexity measured beside the
    uniform model's; the set that measured lowest, or none when none is lower than uniform by
    `min_gain` (relative).

    Why measure: a low local SQNR says a point is noisy, not that the model is better without
    its noise. On SmolLM2's rotated W8A8KV8 preset raising the 5-40 worst points *raised*
    held-out perplexity (CHANGELOG, session 10): at that level the points' errors
    are even, and recalibrating around a raised point moves perplexity more than its own noise."""
    order = _worst_first(errors)[: max(0, top)]
    trials: list[dict[str, Any]] = []
    for n in _counts(len(order)):
        p = _trial(quantize, perplexity, cfg, qformat, order, n, trials)
        if progress is not None:
            progress(f"worst {n} raised: perplexity {p:.4f}")
    lowest_trial = min(trials, key=lambda t: (t["perplexity"], t["raised"]))
    best = lowest_trial["raised"] if lowest_trial["perplexity"] <= trials[0]["perplexity"] * (1 - min_gain) else 0
    return SearchResult(_with_raised(cfg, qformat, order[:best]), order[:best], trials)
