"""Captured graphs + qformat + calibrated observers -> the tensors and sections of a `.mcq`."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mcq.capture import Captured
from mcq.config import QuantConfig
from mcq.observers import Observer, range_to_qparams, weight_qparams
from runtime import numerics
from runtime.ir import Graph, TensorRef
from runtime.lower import quant_params


@dataclass
class Assembled:
    graphs: dict[str, Graph]
    tensors: dict[str, torch.Tensor]
    qformat: dict[str, Any]


def _store(tensors: dict[str, torch.Tensor], prefix: str, scale: torch.Tensor, zp: torch.Tensor,
           spec: dict[str, Any]) -> None:
    tensors[f"{prefix}.scale"] = scale.to(torch.float32).contiguous()
    tensors[f"{prefix}.zero_point"] = zp.to(torch.int32).contiguous()
    spec["scale"], spec["zero_point"] = f"{prefix}.scale", f"{prefix}.zero_point"


def _smoothing_vectors(graph: Graph, qformat: dict[str, Any], observers: dict[tuple[str, str], Observer],
                       weight_of: dict[str, str], captured: Captured, cfg: QuantConfig) -> dict[str, torch.Tensor]:
    """SmoothQuant: s[k] = amax_x[k]^alpha / amax_w[k]^(1-alpha), one vector per group of linears
    reading the same tensor (q/k/v, gate/up), so that tensor is quantized once."""
    groups: dict[Any, list[str]] = {}
    for n in graph.nodes:
        entry = qformat["nodes"].get(n.qkey) if n.qkey else None
        if entry and "smooth" in entry["inputs"].get("x", {}) and entry.get("weight"):
            groups.setdefault(n.args[0], []).append(n.qkey)  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    alpha = float(cfg.smoothquant_alpha)
    for keys in groups.values():
        obs = observers[(keys[0], "x")]
        assert obs.min is not None and obs.max is not None
        act = torch.maximum(obs.min.abs(), obs.max.abs())
        wmax = torch.stack([captured.tensors[weight_of[k]].abs().amax(dim=0) for k in keys]).amax(dim=0)
        s = act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)
        s = torch.where((act > 0) & (wmax > 0), s, torch.ones_like(s)).to(torch.float32)
        for k in keys:
            out[k] = s
    return out


def assemble(captured: Captured, plan: dict[str, Any], observers: dict[tuple[str, str], Observer],
             cfg: QuantConfig, heads: int) -> Assembled:
    qformat = copy.deepcopy(plan)
    graphs = {k: copy.deepcopy(g) for k, g in captured.graphs.items()}
    tensors: dict[str, torch.Tensor] = {}
    weight_of: dict[str, str] = {}
    for g in graphs.values():
        for n in g.nodes:
            if n.qkey in qformat["nodes"] and qformat["nodes"][n.qkey].get("weight"):
                assert isinstance(n.args[1], TensorRef)
                weight_of.setdefault(n.qkey, n.args[1].name)
                n.args[1] = TensorRef(f"{n.qkey}/weight")  # both graphs read the same quantized copy
    smooth = _smoothing_vectors(captured.graphs["prefill"], qformat, observers, weight_of, captured, cfg)
    for qkey, entry in qformat["nodes"].items():
        wspec = entry.get("weight")
        if wspec:
            w = captured.tensors[weight_of[qkey]].to(torch.float32)
            if qkey in smooth:
                w = w * smooth[qkey]  # folded: the input quantizer divides by the same vector
            scale, zp = weight_qparams(w, wspec["method"], wspec["granularity"], wspec["nbits"])
            _store(tensors, f"{qkey}/weight", scale, zp, wspec)
            tensors[f"{qkey}/weight"] = numerics.quantize(w, quant_params(wspec, tensors.__getitem__))
        for role, spec in entry["inputs"].items():
            if spec.get("source"):
                continue
            obs = observers[(qkey, role)]
            if "smooth" in spec:
                sm = smooth[qkey]
                tensors[f"{qkey}/{role}.smooth"] = sm
                spec["smooth"] = f"{qkey}/{role}.smooth"
                # per-tensor range of x / smooth, exact from the per-channel ranges
                scale, zp = range_to_qparams((obs.min / sm).min(), (obs.max / sm).max(), spec["method"],
                                             spec["nbits"])
            else:
                scale, zp = obs.qparams(spec["method"], spec["nbits"])
            _store(tensors, f"{qkey}/{role}", scale, zp, spec)
    for qkey, entry in qformat["nodes"].items():  # derived specs, after their sources exist
        for role, spec in entry["inputs"].items():
            src = spec.get("source")
            if src:
                s = qformat["nodes"][src]["inputs"]["x"]
                kv_scale, kv_zp = tensors[s["scale"]], tensors[s["zero_point"]]
                group = heads // kv_scale.numel()  # grouped-query attention: heads share a KV head
                _store(tensors, f"{qkey}/{role}", kv_scale.repeat_interleave(group),
                       kv_zp.repeat_interleave(group), spec)
    used = set().union(*(g.tensor_names() for g in graphs.values()))
    for name in sorted(used):
        if name not in tensors:
            tensors[name] = captured.tensors[name]
    return Assembled(graphs, tensors, qformat)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        raise TypeError("bf16 tensors are stored through RawTensor")
    return t.detach().contiguous().numpy()


def _signature(g: Graph) -> list[dict[str, Any]]:
    return [i.encode() for i in g.inputs]


def sections(assembled: Assembled, captured: Captured, cfg: QuantConfig, tokenizer: Any,
             producer_version: str) -> dict[str, Any]:
    """Manifest, graphs, qformat and tokenizer sections of the bundle."""
    from mcq_format.constants import FORMAT_VERSION, OPSET_VERSION

    graphs = assembled.graphs
    entry_points = {
        name: {"graph": f"graph/{name}", "inputs": _signature(g),
               "outputs": [{"name": o, "dtype": "float32", "shape": []} for o, _ in g.outputs]}
        for name, g in graphs.items()
    }
    tok_meta = None
    out: dict[str, Any] = {}
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        tok_meta = {"bos_token_id": tokenizer.bos_token_id,
                    "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or []),
                    "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos}
        out["tokenizer"] = {"kind": "hf-tokenizers-json", "json": tokenizer.backend_tokenizer.to_str()}
    elif captured.model_config.get("eos_token_id") is not None:
        eos = captured.model_config["eos_token_id"]
        tok_meta = {"bos_token_id": captured.model_config.get("bos_token_id"), "eos_token_ids": [eos],
                    "pad_token_id": eos}
    kv_dtype = cfg.kv_dtype if any(e["kind"] == "kv_cache" for e in assembled.qformat["nodes"].values()) \
        else "float32"
    out["manifest"] = {
        "format": "mcq",
        "format_version": list(FORMAT_VERSION),
        "opset_version": OPSET_VERSION,
        "producer": {"name": "mcq", "version": producer_version},
        "model": {"family": captured.family, "config": captured.model_config},
        "entry_points": entry_points,
        "kv_cache": {**captured.kv_shape, "dtype": kv_dtype},
        "quant": {**cfg.to_dict()},
        "tokenizer": tok_meta,
    }
    for name, g in graphs.items():
        out[f"graph/{name}"] = g.encode()
    out["qformat"] = assembled.qformat
    return out
