"""Automatic mixed precision (mcq.search): worst nodes first, budget respected, choice recorded."""
from __future__ import annotations

import dataclasses
import math

import pytest

from mcq import search
from mcq.config import ConfigError, QuantConfig
from mcq.report import NodeError

QFORMAT = {"nodes": {
    "a/linear0": {"kind": "linear", "inputs": {"x": {}}, "weight": {"dtype": "int8"}},
    "b/linear0": {"kind": "linear", "inputs": {}, "weight": {"dtype": "int4"}},
    "c/k_cache": {"kind": "kv_cache", "inputs": {"x": {}}, "weight": None},
    "d/bmm0": {"kind": "bmm", "inputs": {"a": {}, "b": {}}, "weight": None},
}}
ERRORS = [NodeError("a/linear0", "linear", 30.0, 30.0), NodeError("b/linear0", "linear", 10.0, 9.0),
          NodeError("c/k_cache", "kv_cache", 20.0, 8.0), NodeError("d/bmm0", "bmm", 40.0, 7.0)]


def test_raise_precision_lifts_each_kind_one_step():
    settings = {k: dict(search.raise_precision(k, v).settings) for k, v in QFORMAT["nodes"].items()}
    assert settings["a/linear0"] == {"act_dtype": "float32"}
    assert settings["b/linear0"] == {"weight_dtype": "int8", "weight_granularity": "channel", "gptq": False}
    assert settings["c/k_cache"] == {"kv_dtype": "float32"}
    assert settings["d/bmm0"] == {"act_dtype": "float32"}


def test_fraction_budget_raises_the_worst_local_sqnr_first():
    r = search.search(lambda c: None, QuantConfig(), ERRORS, QFORMAT, max_fraction=0.5)
    assert r.raised == ["b/linear0", "c/k_cache"]
    assert [o.match for o in r.config.overrides] == ["b/linear0", "c/k_cache"]


def test_perplexity_budget_stops_at_the_first_count_within_it():
    def ppl(cfg: QuantConfig) -> float:
        return 13.0 - len(cfg.overrides)  # each raised node helps by one point

    r = search.search(lambda c: c, QuantConfig(), ERRORS, QFORMAT, max_increase=10.0, perplexity=ppl,
                      float_perplexity=10.0)
    assert [t["raised"] for t in r.trials] == [0, 1, 2]  # 13, 12, 11 <= 11.0
    assert r.raised == ["b/linear0", "c/k_cache"] and r.within_budget
    missed = search.search(lambda c: c, QuantConfig(), ERRORS, QFORMAT, max_increase=0.0, perplexity=ppl,
                           float_perplexity=1.0)
    assert not missed.within_budget and missed.trials[-1]["raised"] == 4


def test_budget_keys_are_checked():
    with pytest.raises(ConfigError, match="give one budget"):
        QuantConfig(auto_max_increase=1.0, auto_max_fraction=0.1)
    with pytest.raises(ConfigError, match="auto_max_fraction: 2"):
        QuantConfig(auto_max_fraction=2)


def test_searched_bundle_records_its_choice(tiny_models):
    import mcq

    cfg = dataclasses.replace(mcq.preset("W8A8KV8"), auto_max_fraction=0.1)
    q = mcq.quantize(tiny_models("llama-tiny"), cfg, progress=False)
    record = q.sections["manifest"]["quant"]["search"]
    points = len(q.sections["qformat"]["nodes"])
    assert len(record["raised"]) == math.ceil(0.1 * points)
    assert q.sections["manifest"]["quant"]["auto_max_fraction"] is None  # the search ran: the result is fixed
    for qkey in record["raised"]:
        entry = q.sections["qformat"]["nodes"][qkey]
        assert not entry["inputs"].get("x") and not entry["inputs"].get("a")  # raised: its input stays float


def test_lowest_keeps_the_set_that_measured_lowest():
    lowered = {0: 12.0, 1: 11.5, 2: 11.0, 4: 11.2}  # raising 2 helps most, all 4 helps less

    r = search.lowest(lambda c: c, QuantConfig(), ERRORS, QFORMAT, lambda c: lowered[len(c.overrides)], top=4)
    assert [t["raised"] for t in r.trials] == [0, 1, 2, 4]
    assert r.raised == ["b/linear0", "c/k_cache"]  # worst local SQNR first
    assert [o.match for o in r.config.overrides] == r.raised


def test_lowest_suggests_nothing_when_no_raised_set_measured_lower():
    r = search.lowest(lambda c: c, QuantConfig(), ERRORS, QFORMAT, lambda c: 10.0 + len(c.overrides), top=3)
    assert [t["raised"] for t in r.trials] == [0, 1, 2, 3]
    assert r.raised == [] and r.config.overrides == ()


def test_lowest_suggests_nothing_for_a_gain_within_the_noise():
    ppl = {0: 12.0, 1: 11.99, 2: 11.98}  # 0.17 % lower: below MIN_GAIN (0.5 %)
    r = search.lowest(lambda c: c, QuantConfig(), ERRORS, QFORMAT, lambda c: ppl[len(c.overrides)], top=2)
    assert r.raised == [] and [t["raised"] for t in r.trials] == [0, 1, 2]
    assert search.lowest(lambda c: c, QuantConfig(), ERRORS, QFORMAT, lambda c: ppl[len(c.overrides)], top=2,
                         min_gain=0.001).raised == ["b/linear0", "c/k_cache"]
