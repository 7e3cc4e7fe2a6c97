"""Captured graphs + qformat + calibrated observers -> the tensors and sections of a `.mcq`: the
functions each step of `mcq.pipeline` stores its tensors with (into any sink: a dict, a file writer)."""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mcq.capture import Captured
from mcq.config import QuantConfig
from mcq import channels, gptq, rotation
from mcq.interop import ImportedQParams, QParamsImportError
from mcq_format.quant import WEIGHT_ARG  # where a quantized node's weight argument is
from mcq.observers import Observer, spec_to_qp, weight_qparams
from runtime import numerics
from runtime.ir import Graph, Node, Ref, TensorRef


@dataclass
class Assembled:
    graphs: dict[str, Graph]
    tensors: dict[str, torch.Tensor]
    qformat: dict[str, Any]


def _store(tensors: dict[str, torch.Tensor], prefix: str, scale: torch.Tensor, zp: torch.Tensor,
           spec: dict[str, Any]) -> None:
    if spec["dtype"] == "bfloat16":  # a cast: no parameters to store
        spec.pop("scale", None), spec.pop("zero_point", None)
        return
    # zero points always fit the 8-bit grids (spec Q.2: I8); group scales are float16 (4x the
    # count of a channel's: half their bytes keep int4 g128 bundles small), already on that grid
    tensors[f"{prefix}.scale"] = scale.to(scale_dtype(spec)).contiguous()
    tensors[f"{prefix}.zero_point"] = zp.to(torch.int8).contiguous()
    spec["scale"], spec["zero_point"] = f"{prefix}.scale", f"{prefix}.zero_point"


def scale_dtype(spec: dict[str, Any]) -> torch.dtype:
    return torch.float16 if spec.get("granularity") == "group" else torch.float32


def on_scale_grid(scale: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """The scale as stored (float32 values; for group specs rounded to float16, kept above its
    smallest subnormal), so that quantizing uses exactly the value a reader will load."""
    if scale_dtype(spec) == torch.float32:
        return scale.to(torch.float32)
    return scale.to(torch.float32).clamp(min=2.0 ** -24, max=65504.0).to(torch.float16).to(torch.float32)


def quantize_weight(w: torch.Tensor, wspec: dict[str, Any], tensors: dict[str, torch.Tensor], name: str,
                    problem: gptq.Problem | None = None, imported: ImportedQParams | None = None) -> torch.Tensor:
    """Quantize a float weight for its spec: parameters stored in `tensors`, the stored form
    returned (int4 packed two per byte, its unpacked shape in the spec). With a GPTQ `problem`
    the rounding compensates each column's error in the columns not yet quantized."""
    if problem is not None:
        w = problem.target(w)  # sequential GPTQ: the fitted weight's scales (SmolLM2 W4A16: 24.58 vs 24.76)
    scale, zp = weight_qparams(w, wspec)
    if imported is not None:
        scale, zp = imported.params(name.removesuffix("/weight") + ".weight", wspec, tuple(scale.shape)) \
            or (scale, zp)
    scale = on_scale_grid(scale, wspec)
    _store(tensors, name, scale, zp, wspec)
    qp = spec_to_qp(wspec, scale, zp)
    if problem is not None:
        w = gptq.gptq_weight(w, qp, problem.hessian, problem.damp, problem.act_order)
    q = numerics.quantize(w, qp)
    if wspec["dtype"] == "int4":
        wspec["shape"] = list(q.shape)
        return numerics.pack_int4(q)
    return q


def _store_channel_plan(tensors: dict[str, torch.Tensor], prefix: str, plan: channels.ChannelPlan,
                        spec: dict[str, Any]) -> None:
    spec.pop("smooth", None)
    spec.pop("outliers", None)
    spec.pop("rotation", None)
    if plan.rotation is not None:  # one pair of factors per width, shared by every linear of that width
        names = [f"rotation.{int(plan.rotation[1].shape[0] * plan.rotation[0].shape[0])}.{f}" for f in "ab"]
        for name, factor in zip(names, plan.rotation):
            if name not in tensors:
                tensors[name] = factor.contiguous()
        spec["rotation"] = names
    if plan.smooth is not None:
        tensors[f"{prefix}.smooth"] = plan.smooth
        spec["smooth"] = f"{prefix}.smooth"
    if plan.outliers.numel():
        tensors[f"{prefix}.outliers"] = plan.outliers.to(torch.int64)
        spec["outliers"] = f"{prefix}.outliers"


def _shareable(linear: dict[str, Any]) -> bool:
    """An lm_head whose stored int8 rows can serve as the tied embedding table (spec Q.3a)."""
    w = linear.get("weight") or {}
    return (linear["kind"] == "linear" and w.get("dtype") == "int8" and w.get("granularity") == "channel"
            and w.get("axis") == 0 and w.get("symmetric") is True and not linear.get("outlier_weight"))


def unrotate_name(qkey: str) -> str:
    """The matrix that turns a token table's rows back when the table is tied to a rotated lm_head."""
    return f"{qkey}/unrotate"


def store_embedding(tensors: Any, qkey: str, entry: dict[str, Any], table: torch.Tensor, weight_of: dict[str, str],
                    qformat: dict[str, Any], graphs: dict[str, Graph], imported: ImportedQParams | None) -> None:
    """Quantize an embedding table per row, or point it at the int8 weight of the linear it is
    tied to (same float tensor): the table is then stored once, with the linear's smoothing (if
    any) divided back out of the rows at lookup."""
    tied = next((k for k, e in qformat["nodes"].items() if k != qkey and weight_of.get(k) == weight_of[qkey]
                 and _shareable(e)), None)
    if tied is None:
        tensors[f"{qkey}/weight"] = quantize_weight(table.to(torch.float32), entry["weight"], tensors,
                                                    f"{qkey}/weight", None, imported)
        return
    lin = qformat["nodes"][tied]
    entry["weight"] = {**lin["weight"], "shared_with": tied}
    xspec = lin["inputs"].get("x") or {}
    smooth = xspec.get("smooth")
    unrotate = None
    if xspec.get("rotation"):
        # the stored rows are R (w * s): a float matmul after the lookup gives w back
        # (w^T = row^T R diag(1/s)), as ops every reader has; the smoothing is folded into it
        r = rotation.matrix((tensors[xspec["rotation"][0]], tensors[xspec["rotation"][1]]))
        if smooth:
            r = r / tensors[smooth].to(torch.float64)[None, :]
        unrotate = unrotate_name(qkey)
        tensors[unrotate] = r.to(torch.float32).contiguous()
    elif smooth:
        entry["weight"]["smooth"] = smooth
    for g in graphs.values():
        for i, n in enumerate(list(g.nodes)):
            if n.qkey == qkey:
                n.args[WEIGHT_ARG["embedding"]] = TensorRef(f"{tied}/weight")
                if unrotate is not None:  # consumers keep reading the node's name: the matmul takes it
                    looked_up = f"{n.name}_rotated"
                    g.nodes.insert(g.nodes.index(n) + 1,
                                   Node(n.name, "aten.matmul.default", [Ref(looked_up), TensorRef(unrotate)]))
                    n.name = looked_up


def rewire(captured: Captured, plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Graph], dict[str, str]]:
    """(qformat to fill, graphs reading the quantized weights, qkey -> its float weight's name):
    both graphs read the same quantized copy `{qkey}/weight`."""
    qformat = copy.deepcopy(plan)
    graphs = {k: copy.deepcopy(g) for k, g in captured.graphs.items()}
    weight_of: dict[str, str] = {}
    for g in graphs.values():
        for n in g.nodes:
            if n.qkey in qformat["nodes"] and qformat["nodes"][n.qkey].get("weight"):
                arg = WEIGHT_ARG[qformat["nodes"][n.qkey]["kind"]]
                assert isinstance(n.args[arg], TensorRef)
                weight_of.setdefault(n.qkey, n.args[arg].name)
                n.args[arg] = TensorRef(f"{n.qkey}/weight")
    return qformat, graphs, weight_of


def node_plan(qkey: str, chan: dict[str, channels.ChannelPlan],
              imported: ImportedQParams | None) -> channels.ChannelPlan | None:
    """The per-channel treatment of a linear's input: the calibrated one, or an imported smoothing."""
    smooth = imported.smoothing(qkey) if imported is not None else None
    if smooth is None:
        return chan.get(qkey)
    if qkey not in chan or chan[qkey].smooth is None:
        raise QParamsImportError(f"{imported.source}: {qkey}: a smoothing_scale for a node the config "  # type: ignore[union-attr]
                                 "does not smooth (set smoothquant: true)")
    return channels.ChannelPlan(chan[qkey].outliers, smooth, chan[qkey].rotation)


def store_weight(tensors: Any, qkey: str, entry: dict[str, Any], w: torch.Tensor,
                 plan: channels.ChannelPlan | None, problem: gptq.Problem | None,
                 imported: ImportedQParams | None) -> None:
    """Quantize one linear's float weight `w` into `tensors` (smoothing folded in, outlier
    columns split off, GPTQ-rounded when a `problem` is given); `plan` from `node_plan`."""
    w = w.to(torch.float32)
    if plan is not None:
        w, cols = plan.split_weight(w)  # smoothing folded in, outlier columns split off
        if cols.numel():
            tensors[f"{qkey}/weight.outlier_columns"] = cols
            entry["outlier_weight"] = f"{qkey}/weight.outlier_columns"
        if problem is not None:
            problem = problem.transformed(plan.smooth, plan.outliers,
                                          rotation.matrix(plan.rotation) if plan.rotation is not None else None)
    tensors[f"{qkey}/weight"] = quantize_weight(w, entry["weight"], tensors, f"{qkey}/weight", problem, imported)


def store_inputs(tensors: Any, qkey: str, entry: dict[str, Any], observers: dict[tuple[str, str], Observer],
                 plan: channels.ChannelPlan | None, imported: ImportedQParams | None) -> None:
    """Parameters of one quant point's calibrated inputs (derived ones come from `store_derived`)."""
    for role, spec in entry["inputs"].items():
        if spec.get("source"):
            continue
        obs = observers[(qkey, role)]
        if role == "x" and plan is not None:
            scale, zp = plan.input_qparams(obs, spec)
            _store_channel_plan(tensors, f"{qkey}/{role}", plan, spec)
        else:
            scale, zp = obs.qparams(spec)
        if imported is not None:
            scale, zp = imported.params(f"{qkey}.input_{role}", spec, tuple(scale.shape)) or (scale, zp)
        _store(tensors, f"{qkey}/{role}", scale, zp, spec)


def store_derived(tensors: Any, qformat: dict[str, Any], heads: int, imported: ImportedQParams | None) -> None:
    """Specs derived from another quant point (Q.K^T's keys from the K cache), after their sources."""
    for qkey, entry in qformat["nodes"].items():
        for role, spec in entry["inputs"].items():
            src = spec.get("source")
            if src and imported is not None:
                imported.skip(f"{qkey}.input_{role}")
            if src:
                s = qformat["nodes"][src]["inputs"]["x"]
                if s["dtype"] == "bfloat16":
                    continue  # a cast: nothing to repeat per query head
                kv_scale, kv_zp = tensors[s["scale"]], tensors[s["zero_point"]]
                group = heads // kv_scale.numel()  # grouped-query attention: heads share a KV head
                _store(tensors, f"{qkey}/{role}", kv_scale.repeat_interleave(group),
                       kv_zp.repeat_interleave(group), spec)
    if imported is not None:
        imported.check_all_used()


def float_tensor_names(graphs: dict[str, Graph], tensors: Any) -> list[str]:
    """Tensors the graphs read that quantization did not produce: stored as captured (float)."""
    used = set().union(*(g.tensor_names() for g in graphs.values()))
    return [name for name in sorted(used) if name not in tensors]


_RAW_DTYPES = {torch.bfloat16: ("BF16", torch.int16), torch.float8_e4m3fn: ("F8_E4M3", torch.uint8)}


def to_numpy(t: torch.Tensor) -> Any:
    """A tensor as the container writer takes it: numpy, or raw bytes for dtypes numpy lacks."""
    import mcq_format

    t = t.detach().contiguous()
    raw = _RAW_DTYPES.get(t.dtype)
    if raw is not None:
        bits = t.view(raw[1]).numpy()
        return mcq_format.RawTensor(raw[0], tuple(t.shape), bits.reshape(-1).view(np.uint8))
    return t.numpy()


def _signature(g: Graph) -> list[dict[str, Any]]:
    return [i.encode() for i in g.inputs]


def sections(assembled: Assembled, captured: Captured, cfg: QuantConfig, tokenizer: Any,
             producer_version: str) -> dict[str, Any]:
    """Manifest, graphs, qformat and tokenizer sections of the bundle."""
    from mcq_format.constants import FORMAT_VERSION, OPSET_VERSION

    graphs = assembled.graphs
    entry_points = {
        name: {"graph": f"graph/{name}", "inputs": _signature(g),
               "outputs": [o.encode() for o in captured.output_specs[name]] if name in captured.output_specs
               else [{"name": o, "dtype": "float32", "shape": []} for o, _ in g.outputs]}
        for name, g in graphs.items()
    }
    tok_meta = None
    out: dict[str, Any] = {}
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        tok_meta = {"bos_token_id": tokenizer.bos_token_id,
                    "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or []),
                    "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos}
        # zlib level 9 is deterministic: the same tokenizer gives the same bytes
        out["tokenizer"] = {"kind": "hf-tokenizers-json-zlib",
                            "zlib": zlib.compress(tokenizer.backend_tokenizer.to_str().encode("utf-8"), 9)}
        chat = chat_template_section(tokenizer)
        if chat is not None:
            out["tokenizer"]["chat_template"] = chat
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
        # only bundles with a decode entry point have a KV cache to describe
        **({"kv_cache": {**captured.kv_shape, "dtype": kv_dtype}} if captured.kv_shape else {}),
        "quant": {**cfg.to_dict()},
        "tokenizer": tok_meta,
    }
    for name, g in graphs.items():
        out[f"graph/{name}"] = g.encode()
    out["qformat"] = assembled.qformat
    return out


def chat_template_section(tokenizer: Any) -> dict[str, Any] | None:
    """The tokenizer section's chat template (spec 5.6.1) of a Hugging Face tokenizer, from its
    tokenizer config or GGUF metadata (transformers exposes both as `chat_template`); None where
    it has none. A tokenizer with several named templates gives its "default" one."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if not isinstance(template, str) or not template:
        return None
    tokens = {name: str(text) for name, text in (getattr(tokenizer, "special_tokens_map", None) or {}).items()
              if isinstance(text, str)}  # the named ones, as apply_chat_template passes them
    return {"syntax": "hf-jinja2/1", "template": template, "special_tokens": tokens}
