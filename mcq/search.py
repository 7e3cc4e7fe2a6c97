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
    order = [e.qkey for e in sorted(errors, key=lambda e: e.local_sqnr_db)]
    if max_fraction is not None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction: {max_fraction!r} is not in [0, 1]")
        raised = order[: math.ceil(max_fraction * len(order))]
        return SearchResult(_with_raised(cfg, qformat, raised), raised)
    assert perplexity is not None and float_perplexity is not None and max_increase is not None
    limit = float_perplexity * (1 + max_increase / 100.0)
    trials: list[dict[str, Any]] = []
    counts = [0] + [2 ** i for i in range(int(math.log2(max(1, len(order)))) + 1)] + [len(order)]
    best = 0
    for n in sorted(set(counts)):
        p = perplexity(quantize(_with_raised(cfg, qformat, order[:n])))
        trials.append({"raised": n, "perplexity": p})
        best = n
        if p <= limit:
            break
    within = trials[-1]["perplexity"] <= limit
    return SearchResult(_with_raised(cfg, qformat, order[:best]), order[:best], trials, float_perplexity, within)
