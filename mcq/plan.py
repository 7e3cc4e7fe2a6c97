"""Decide, per quant point, what gets quantized and how (the qformat, before calibration)."""
from __future__ import annotations

from typing import Any

from mcq.config import DTYPE_BITS, QuantConfig
from runtime.ir import Graph, Ref
from runtime.ops import KV_POINT

LINEAR, BMM, EMBEDDING = "aten.linear.default", "aten.bmm.default", "aten.embedding.default"


def _with_percentile(spec: dict[str, Any], cfg: QuantConfig) -> dict[str, Any]:
    if spec["method"].startswith("PERCENTILE"):
        spec["percentile"] = float(cfg.percentile)
    return spec


def _act_spec(cfg: QuantConfig, granularity: str = "tensor", axis: int | None = None,
              dtype: str | None = None) -> dict[str, Any]:
    dtype = dtype or cfg.act_dtype
    integer = dtype == "int8"  # fp8 scales are symmetric; a bf16 cast has no scale at all
    return _with_percentile({"dtype": dtype, "nbits": DTYPE_BITS[dtype], "granularity": granularity,
                             "axis": axis, "symmetric": cfg.act_calib_method.endswith("_SYM") or not integer,
                             "method": cfg.act_calib_method}, cfg)


def _kv_spec(cfg: QuantConfig) -> dict[str, Any]:
    # one scale per KV head: axis 1 of [batch, kv_heads, seq, head_dim]
    return _act_spec(cfg, "channel", 1, cfg.kv_dtype)


def _weight_spec(cfg: QuantConfig) -> dict[str, Any]:
    gran = cfg.weight_granularity
    spec = {"dtype": cfg.weight_dtype, "nbits": cfg.weight_bits, "granularity": gran,
            "axis": {"channel": 0, "group": 1}.get(gran), "symmetric": cfg.weight_calib_method.endswith("_SYM"),
            "method": cfg.weight_calib_method,
            "rounding": "gptq" if cfg.gptq and cfg.weight_dtype in ("int8", "int4", "fp8_e4m3fn") else "nearest"}
    if gran == "group":
        spec["group_size"] = int(cfg.weight_group_size)
    return _with_percentile(spec, cfg)


EMBEDDING_SPEC = {"dtype": "int8", "nbits": 8, "granularity": "channel", "axis": 0, "symmetric": True,
                  "method": "AMAX_SYM", "rounding": "nearest"}


def _inout_keys(graph: Graph) -> set[str]:
    """Linears reading the model's first quantized input, and the last linear (disable_inout)."""
    linears = [n for n in graph.nodes if n.op == LINEAR and n.qkey]
    if not linears:
        return set()
    first_input = linears[0].args[0]
    first = {n.qkey for n in linears if isinstance(n.args[0], Ref) and n.args[0] == first_input}
    return {*first, linears[-1].qkey}  # type: ignore[misc]


_KIND = {LINEAR: "linear", BMM: "bmm", KV_POINT: "kv_cache", EMBEDDING: "embedding"}


def plan_qformat(graph: Graph, config: QuantConfig, heads: int = 1) -> dict[str, Any]:
    """qformat nodes (specs without scales) for every quant point of `graph`; `heads`: attention
    heads of the model (per-head query scales)."""
    nodes: dict[str, Any] = {}
    skipped = _inout_keys(graph) if config.disable_inout else set()
    has_kv_cache = any(n.op == KV_POINT for n in graph.nodes)
    for n in graph.nodes:
        if not n.qkey or n.qkey in skipped or n.op not in _KIND:
            continue
        cfg = config.for_node(n.qkey, _KIND[n.op])
        if n.op == LINEAR:
            entry: dict[str, Any] = {"kind": "linear", "inputs": {}, "weight": None}
            if cfg.quantizes_weights:
                entry["weight"] = _weight_spec(cfg)
            if cfg.quantizes_acts:
                entry["inputs"]["x"] = _act_spec(cfg)
                # per-channel treatments are chosen at assembly from per-channel ranges
                if cfg.act_dtype == "bfloat16":
                    pass  # a cast has no range for smoothing or outlier channels to shrink
                elif cfg.smoothquant and cfg.quantizes_weights:
                    entry["inputs"]["x"]["smooth"] = ""
                if cfg.act_outlier_threshold > 0 and cfg.quantizes_weights and cfg.act_dtype != "bfloat16":
                    entry["inputs"]["x"]["outliers"] = ""
                    entry["inputs"]["x"]["outlier_threshold"] = float(cfg.act_outlier_threshold)
                if cfg.act_rotation and cfg.quantizes_weights and cfg.act_dtype != "bfloat16":
                    entry["inputs"]["x"].update({"granularity": "rotated_tensor", "rotation": ""})
            if entry["weight"] or entry["inputs"]:
                nodes[n.qkey] = entry
        elif n.op == EMBEDDING and cfg.quantizes_embedding:
            # int8 rows, one scale per token; a tied int8 lm_head may share them (mcq.bundle)
            nodes[n.qkey] = {"kind": "embedding", "inputs": {}, "weight": EMBEDDING_SPEC.copy()}
        elif n.op == KV_POINT and cfg.quantizes_kv:
            nodes[n.qkey] = {"kind": "kv_cache", "inputs": {"x": _kv_spec(cfg)}, "weight": None}
        elif n.op == BMM and cfg.quantizes_acts and cfg.quantizes_kv:
            source = n.meta.get("b_source", "")
            # Q.K^T runs in int8; P.V keeps the softmax output in float (reference recipe)
            if source.endswith("/k_cache") and source in nodes:
                b = _kv_spec(cfg)
                b.update({"granularity": "head", "axis": 0, "source": source})
                a = _act_spec(cfg)
                if cfg.attn_granularity == "head" and heads > 1:
                    # the query [batch * heads, seq, head_dim]: one scale per head, like the keys
                    a.update({"granularity": "head", "axis": 0, "heads": heads})
                nodes[n.qkey] = {"kind": "bmm", "inputs": {"a": a, "b": b}, "weight": None}
        elif n.op == BMM and cfg.quantizes_acts and not has_kv_cache and n.meta.get("attention_scores"):
            # an encoder's Q.K^T: both operands are activations, each with its own per-tensor
            # scale (no cache to share one with); P.V keeps the float softmax as in decoders
            nodes[n.qkey] = {"kind": "bmm", "inputs": {"a": _act_spec(cfg), "b": _act_spec(cfg)}, "weight": None}
    return {"version": 1, "nodes": nodes}
