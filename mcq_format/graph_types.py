"""The graph type check (spec 5.4a): every node's arguments against its op's signature, and the
dtypes and shapes they produce, run over each graph at two assignments of its symbolic sizes.

A graph that passes is one the reference path can execute: arities and argument kinds bind,
every dim and index is in range, shapes broadcast, views fit, tensors stay within the size
limit, graph outputs are tensors, and the causal-LM entry points (`prefill`, `decode`) hand each
other a KV cache of the shapes they expect. Pure Python: no torch, no tensor data read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from . import constants as C
from .errors import EntryConventionError, GraphShapeError, GraphSignatureError
from .graph_values import check_indices, input_value, with_value
from .quant import FORMATS, WEIGHT_ARG, TensorView
from .shape_rules import RULES, RuleError, T, Tag, is_float
from .signatures import SIGNATURES, Param

# Two assignments of the symbolic sizes (spec 5.4a): distinct, > 1 (so that broadcasting cannot
# hide a wrong size) and with seq >= 2 (prefill graphs are exported for two tokens or more).
SIZES: tuple[dict[str, int], ...] = ({"batch": 2, "seq": 5, "past": 3}, {"batch": 3, "seq": 2, "past": 6})
OTHER_SIZE = (4, 7)  # any other symbol, per assignment
MIN_ELEMENT_LIMIT = 2**24  # a tensor at the check sizes holds at most max(this, 4 x the file's largest)
_DIM = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)(?:([+-])(\d{1,9}))?")
_STORAGE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8", "I16": "int16",
            "I32": "int32", "I64": "int64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn"}


def dim_size(d: int | str, sizes: Mapping[str, int], k: int) -> int:
    """A symbolic dim's size: `name`, `name+n` or `name-n`; other strings are opaque symbols."""
    if isinstance(d, int):
        return d
    m = _DIM.fullmatch(d)
    if not m:
        return OTHER_SIZE[k]
    base = sizes.get(m[1], OTHER_SIZE[k])
    return base + (int(m[3]) if m[2] == "+" else -int(m[3])) if m[2] else base


class _Checker:
    def __init__(self, name: str, graph: Mapping[str, Any], view: TensorView, qnodes: Mapping[str, Any],
                 limit: int, k: int) -> None:
        self.name, self.graph, self.view, self.qnodes, self.limit, self.k = name, graph, view, qnodes, limit, k
        self.env: dict[str, Any] = {}
        self.at = name

    def fail(self, message: str, error: type = GraphShapeError) -> Any:
        sizes = ", ".join(f"{s}={v}" for s, v in SIZES[self.k].items())
        raise error(f"{self.at}: {message} (at {sizes})")

    def tensor(self, name: str) -> T:
        dtype, shape = self.view.spec(name)
        return T(_STORAGE[dtype], tuple(shape))

    def value(self, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        tag, payload = v
        if tag == "ref":
            return self.env[payload]
        if tag == "tensor":
            return self.tensor(payload)
        if tag == "list":
            return [self.value(x) for x in payload]
        return Tag(tag, payload)

    def checked(self, out: Any) -> Any:
        for t in (out,) if isinstance(out, T) else out if isinstance(out, (list, tuple)) else ():
            if isinstance(t, T):
                if len(t.shape) > C.MAX_TENSOR_RANK:
                    self.fail(f"a rank-{len(t.shape)} tensor (at most {C.MAX_TENSOR_RANK})")
                if math.prod(t.shape) > self.limit:
                    self.fail(f"a tensor of {math.prod(t.shape)} elements {list(t.shape)} (limit {self.limit})")
        return out

    def run(self) -> dict[str, Any]:
        sizes = SIZES[self.k]
        for spec in self.graph["inputs"]:
            self.at = f"{self.name}: input {spec['name']!r}"
            shape = tuple(dim_size(d, sizes, self.k) for d in spec["shape"])
            if any(s < 0 for s in shape):
                self.fail(f"shape {spec['shape']} is negative")
            self.env[spec["name"]] = self.checked(input_value(spec["name"], T(spec["dtype"], shape)))
        for j, node in enumerate(self.graph["nodes"]):
            self.at = f"{self.name}: nodes[{j}] {node['name']!r} ({node['op']})"
            args = [self.value(a) for a in node["args"]]
            kwargs = {key: self.value(a) for key, a in node["kwargs"].items()}
            entry = self.qnodes.get(node.get("qkey")) if isinstance(node.get("qkey"), str) else None
            if isinstance(entry, dict) and isinstance(entry.get("weight"), dict):
                i = WEIGHT_ARG[entry["kind"]]
                if len(args) > i and isinstance(args[i], T):  # the graph sees the dequantized weight
                    args[i] = T("float32", _logical_shape(entry["weight"], args[i].shape))
            bound = self.bind(node["op"], args, kwargs)
            try:
                check_indices(node["op"], bound)
                out = with_value(node["op"], bound, RULES[node["op"]](bound))
                self.env[node["name"]] = self.checked(out)
            except RuleError as e:
                self.fail(str(e))
        outputs = {}
        for out in self.graph["outputs"]:
            self.at = f"{self.name}: output {out['name']!r}"
            value = self.value(out["value"])
            if not isinstance(value, T):
                self.fail(f"a graph output is a tensor, got {_kind(value)}", GraphSignatureError)
            outputs[out["name"]] = value
        if not outputs:
            self.at = self.name
            self.fail("a graph has at least one output", GraphSignatureError)
        return outputs

    def bind(self, op: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        sig = SIGNATURES[op]
        positional = [p for p in sig if not p.keyword_only]
        if len(args) > len(positional):
            self.fail(f"{len(args)} positional arguments, {op} takes {len(positional)}", GraphSignatureError)
        bound = {p.name: a for p, a in zip(positional, args)}
        names = {p.name for p in sig}
        for key, a in kwargs.items():
            if key not in names or key in bound:
                self.fail(f"keyword {key!r} is {'given twice' if key in bound else 'not a parameter'} of {op}",
                          GraphSignatureError)
            bound[key] = a
        for p in sig:
            if p.name not in bound:
                if p.required:
                    self.fail(f"argument {p.name!r} of {op} is missing", GraphSignatureError)
                bound[p.name] = p.default
            elif not _fits(bound[p.name], p):
                self.fail(f"argument {p.name!r} of {op} is a {p.kind}, got {_kind(bound[p.name])}",
                          GraphSignatureError)
        if bound.get("pin_memory"):  # pinned memory needs an accelerator; graphs run where the reader runs them
            self.fail(f"pin_memory=True in {op}: a graph's tensors are plain CPU tensors", GraphSignatureError)
        return bound


def _logical_shape(spec: Mapping[str, Any], stored: tuple[int, ...]) -> tuple[int, ...]:
    fmt = FORMATS.get(spec.get("dtype", ""))
    return tuple(spec["shape"]) if fmt is not None and fmt.per_byte > 1 else stored


def _kind(v: Any) -> str:
    if isinstance(v, T):
        return f"tensor {v.dtype}{list(v.shape)}"
    if isinstance(v, Tag):
        return f"{v.kind} {v.value!r}"
    if isinstance(v, (list, tuple)):
        return f"list of {len(v)}"
    return "nil" if v is None else f"{type(v).__name__} {v!r}"


def _int(v: Any) -> bool:
    return type(v) is int


_KINDS: dict[str, Any] = {
    "Tensor": lambda v: isinstance(v, T),
    "TensorLike": lambda v: isinstance(v, (T, int, float)),
    "Tensor[]": lambda v: isinstance(v, list) and all(isinstance(x, T) for x in v),
    "Tensor?[]": lambda v: isinstance(v, list) and all(x is None or isinstance(x, T) for x in v),
    "int": _int,
    "int[]": lambda v: isinstance(v, list) and len(v) <= C.MAX_TENSOR_RANK and all(_int(x) for x in v),
    "int[1]": lambda v: isinstance(v, list) and len(v) <= C.MAX_TENSOR_RANK and all(_int(x) for x in v),
    "Scalar": lambda v: isinstance(v, (int, float)),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "Number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "Sequence": lambda v: isinstance(v, (list, tuple)),
    "str": lambda v: isinstance(v, Tag) and v.kind == "str",
    "ScalarType": lambda v: isinstance(v, Tag) and v.kind == "dtype",
    "Layout": lambda v: isinstance(v, Tag) and v.kind == "layout",
    "Device": lambda v: isinstance(v, Tag) and v.kind == "device",
    "MemoryFormat": lambda v: isinstance(v, Tag) and v.kind == "memory_format",
}


def _fits(v: Any, p: Param) -> bool:
    kind = p.kind
    if kind.endswith("?"):
        if v is None:
            return True
        kind = kind[:-1]
    return bool(_KINDS[kind](v))


def check_graph_types(sections: Mapping[str, Any], view: TensorView, largest: int) -> None:
    """Type-check every graph section at both size assignments, then the entry point conventions.
    `largest`: the element count of the file's largest tensor (sets the size limit)."""
    qnodes = (sections.get(C.SECTION_QFORMAT) or {}).get("nodes") or {}
    limit = max(MIN_ELEMENT_LIMIT, 4 * largest)
    entries = sections[C.SECTION_MANIFEST]["entry_points"]
    for k in range(len(SIZES)):
        outputs = {}
        for name in sorted(sections):
            if name.startswith(C.SECTION_GRAPH_PREFIX):
                outputs[name] = _Checker(name, sections[name], view, qnodes, limit, k).run()
        for entry, ep in sorted(entries.items()):
            for spec in ep["outputs"]:
                got = outputs[ep["graph"]].get(spec["name"])
                if got is not None and got.dtype != spec["dtype"]:
                    raise EntryConventionError(f"manifest: entry_points.{entry}: output {spec['name']!r} is "
                                               f"{got.dtype} in {ep['graph']}, the entry point says {spec['dtype']}")
        if "prefill" in entries and "decode" in entries:
            _causal_lm(sections, entries, outputs, k)


def _causal_lm(sections: Mapping[str, Any], entries: Mapping[str, Any], outputs: Mapping[str, Any], k: int) -> None:
    """Spec 5.3.1: prefill(input_ids, attention_mask) -> logits, present.*; decode(input_ids,
    attention_mask, past.*) -> logits, present.*; prefill's presents are decode's first past,
    decode's the one new position the reader appends to it."""
    sizes = SIZES[k]
    b, s, p = sizes["batch"], sizes["seq"], sizes["past"]

    def fail(message: str) -> None:
        raise EntryConventionError(f"manifest: entry_points: {message} (spec 5.3.1; at batch={b}, seq={s}, past={p})")

    pre_graph, dec_graph = (sections[entries[e]["graph"]] for e in ("prefill", "decode"))
    pre_in = [x["name"] for x in pre_graph["inputs"]]
    dec_in = dec_graph["inputs"]
    if pre_in != ["input_ids", "attention_mask"] or [x["name"] for x in dec_in[:2]] != pre_in:
        fail(f"prefill takes input_ids, attention_mask and decode those then the past; got {pre_in} and "
             f"{[x['name'] for x in dec_in]}")
    for graph in (pre_graph, dec_graph):
        for x in graph["inputs"][:2]:
            if x["dtype"] != "int64" or len(x["shape"]) != 2:
                fail(f"{x['name']} is int64 [batch, n], got {x['dtype']} {x['shape']}")
    past = dec_in[2:]
    pre_out, dec_out = (list(outputs[entries[e]["graph"]].items()) for e in ("prefill", "decode"))
    for what, outs, n in (("prefill", pre_out, s), ("decode", dec_out, 1)):
        if not outs or outs[0][0] != "logits" or len(outs) != len(past) + 1:
            fail(f"{what} returns logits and one present per past input ({len(past)}), got {[o for o, _ in outs]}")
        logits = outs[0][1]
        if len(logits.shape) != 3 or logits.shape[:2] != (b, n) or not is_float(logits.dtype):
            fail(f"{what} logits are floating [batch, {'seq' if n == s else 1}, vocab], got "
                 f"{logits.dtype}{list(logits.shape)}")
    if pre_out[0][1].shape[2] != dec_out[0][1].shape[2]:
        fail(f"prefill and decode logits differ in vocabulary: {pre_out[0][1].shape[2]} and {dec_out[0][1].shape[2]}")
    for i, spec in enumerate(past):
        for what, (_, got), length in (("prefill", pre_out[i + 1], s), ("decode", dec_out[i + 1], 1)):
            want = tuple(dim_size(d, {**sizes, "past": length}, k) for d in spec["shape"])
            if got.shape != want or got.dtype != spec["dtype"]:
                fail(f"{what}'s present #{i} is {got.dtype}{list(got.shape)}; the past input {spec['name']!r} "
                     f"{spec['shape']} needs {spec['dtype']}{list(want)}")
