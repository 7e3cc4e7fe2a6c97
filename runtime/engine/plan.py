"""A bundle's graph (runtime.ir) + qformat -> a native Program at qlevel 4: the decisions
`runtime.lower` makes for the reference path (which quantized form each node takes), emitted as
engine op calls over numbered slots instead of fx nodes. numpy only: no torch at load.

What the engine has no form for (weight-only linears, fp8, groups, an op outside its table)
raises `Unsupported` naming the node; the model then runs that entry point on the reference."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from runtime import native
from runtime.engine import attention, fuse, kv_shadow, quant
from runtime.engine.quant import DTYPE_CODES, NUMPY_CODES, Spec, Unsupported
from runtime.engine.schemas import SchemaError, normalize
from runtime.ir import Graph, Node, Ref, Symbol, TensorRef

LINEAR, BMM, EMBEDDING, KV_POINT = "aten.linear.default", "aten.bmm.default", "aten.embedding.default", \
    "mcq.kv_point"
LAST = 2 ** 63 - 1


def past_input_name(layer: int, which: int) -> str:
    return f"past.{layer}.{'kv'[which]}"


class Planner:
    def __init__(self, graph: Graph, tensor: quant.TensorSource, qformat: Mapping[str, Any] | None,
                 shared: dict[Any, Any], last_position_logits: bool = False,
                 release: Callable[[str], None] | None = None) -> None:
        self.graph, self.tensor, self.shared, self.release = graph, tensor, shared, release
        self.qnodes: Mapping[str, Any] = (qformat or {}).get("nodes", {})
        self.slots: dict[str, int] = {}
        self.code: list[tuple[str, str, Any, list[Any]]] = []  # (op, node, out slot or slots, args)
        self.pending: dict[str, Any] = {}  # past-KV input -> its dequantizing spec (at first use)
        self.stored: dict[str, int] = {}  # kv point node -> slot of its stored (quantized) form
        self.stored_specs: dict[str, Spec] = {}  # kv point node -> its spec
        self.constants: dict[str, tuple[Any, ...]] = {}
        # int8 KV values behind float ones (runtime.engine.kv_shadow): name -> shadow, the node
        # that makes it, and its int8 slot once emitted
        self.shadows: dict[str, kv_shadow.Shadow] = {}
        self.shadow_nodes: dict[str, Node] = {}
        self.shadow_slots: dict[str, int] = {}
        self.fusions = fuse.Matcher(graph, tensor) if fuse.float32_graph(graph) else None
        self.attention = attention.Matcher(self.fusions.nodes) if self.fusions is not None else None
        self.last_position_of = {v.name for n, v in graph.outputs if n == "logits" and isinstance(v, Ref)} \
            if last_position_logits else set()

    def slot(self, name: str) -> int:
        if name not in self.slots:
            self.slots[name] = len(self.slots)
        return self.slots[name]

    def temp(self, hint: str) -> int:
        return self.slot(f"#{len(self.slots)}:{hint}")

    def emit(self, op: str, node: str, args: list[Any], out: int | list[int] | None = None) -> Any:
        out = self.temp(node) if out is None else out
        self.code.append((op, node, out, args))
        return out

    # -- arguments -----------------------------------------------------------------------------
    def arg(self, v: Any, node: str) -> tuple[Any, ...]:
        if isinstance(v, Ref):
            if v.name in self.pending:
                spec = self.pending.pop(v.name)
                self.slots[v.name] = self.emit("mcq.dequantize", node, [("ref", self.slots[v.name]), ("object", spec)])
            if v.name not in self.slots:
                raise Unsupported(f"node {node}: reference to unknown value {v.name!r}")
            return ("ref", self.slots[v.name])
        if isinstance(v, TensorRef):
            return self.constant(v.name)
        if isinstance(v, Symbol):
            if v.tag == "dtype":
                if v.name not in DTYPE_CODES:
                    raise Unsupported(f"node {node}: dtype {v.name} (engine: {', '.join(DTYPE_CODES)})")
                return ("int", DTYPE_CODES[v.name])
            raise Unsupported(f"node {node}: a {v.tag} argument where the engine expects a value")
        if v is None:
            return ("none",)
        if isinstance(v, bool):
            return ("bool", int(v))
        if isinstance(v, int):
            return ("int", v)
        if isinstance(v, float):
            return ("float", v)
        if isinstance(v, (list, tuple)):
            return ("list", [self.arg(x, node) for x in v])
        raise Unsupported(f"node {node}: argument {v!r} of type {type(v).__name__}")

    def constant(self, name: str) -> tuple[Any, ...]:
        if name not in self.constants:
            a = self.tensor(name)
            code = NUMPY_CODES.get(a.dtype)
            if code is None:
                raise Unsupported(f"stored tensor {name!r} of dtype {a.dtype}")
            self.constants[name] = ("tensor", np.ascontiguousarray(a), code, list(a.shape))
        return self.constants[name]

    # -- nodes ---------------------------------------------------------------------------------
    def build(self) -> tuple[Any, list[int]]:
        """(the native Program, each input's dtype code: the graph's, or the KV storage dtype for
        a past-KV input, which holds the quantized cache at qlevel 4)."""
        kv_specs = self._kv_specs()
        inputs, codes = [], []
        for spec in self.graph.inputs:
            if spec.dtype not in DTYPE_CODES:
                raise Unsupported(f"input {spec.name!r} of dtype {spec.dtype}")
            codes.append(kv_specs[spec.name].storage if spec.name in kv_specs else DTYPE_CODES[spec.dtype])
            inputs.append(self.slot(spec.name))
            if spec.name in kv_specs:
                self.pending[spec.name] = kv_specs[spec.name].native
                shadow = kv_shadow.source(self.slots[spec.name], kv_specs[spec.name], spec.shape)
                if shadow is not None:
                    self.shadows[spec.name], self.shadow_slots[spec.name] = shadow, self.slots[spec.name]
        self.groups = self._linear_groups()
        self.grouped: set[str] = set()
        for node in self.graph.nodes:
            if node.name not in self.grouped:
                self.node(node)
        outputs = []
        for name, v in self.graph.outputs:
            if not isinstance(v, Ref):
                raise Unsupported(f"output {name!r} is not a graph value")
            outputs.append(self.stored.get(v.name, self.slots.get(v.name, -1)))
            if outputs[-1] < 0:
                raise Unsupported(f"output {name!r} refers to unknown value {v.name!r}")
        return self._program(inputs, outputs), codes

    def _linear_groups(self) -> dict[str, list[Node]]:
        """Quantized linears that read one input (q/k/v, gate/up), keyed by the first: run as one
        mcq.qlinear_group call (one pool call over all their columns, the same values)."""
        if self.fusions is None or not fuse.ENABLED:
            return {}
        by_input: dict[str, list[Node]] = {}
        for n in self.graph.nodes:
            q = self.qnodes.get(n.qkey) if n.qkey else None
            if n.op != LINEAR or not q or n.name in self.last_position_of or not isinstance(n.args[0], Ref):
                continue
            xspec = (q.get("inputs") or {}).get("x")
            bias = n.args[2] if len(n.args) > 2 else None
            if xspec is None or not q.get("weight") or q.get("outlier_weight") or xspec.get("outliers") \
                    or not (bias is None or isinstance(bias, TensorRef)) or not isinstance(n.args[1], TensorRef):
                continue
            by_input.setdefault(n.args[0].name, []).append(n)
        return {members[0].name: members for members in by_input.values() if len(members) > 1}

    def linear_group(self, members: list[Node]) -> bool:
        """The group's one call, or False (a member's form the group op does not take)."""
        params = []
        for n in members:
            assert n.qkey is not None  # a quantized linear (Planner._linear_groups)
            q = self.qnodes[n.qkey]
            x = self.spec(q["inputs"]["x"])
            if not x.per_tensor or x.storage != DTYPE_CODES["int8"] or x.qmin < -128 or x.qmax > 127:
                return False
            params.append(("object", self.linear_params(n, q, n.args[1].name)))
        first = members[0]
        biases = [self.arg(n.args[2], n.name) if len(n.args) > 2 else ("none",) for n in members]
        self.emit("mcq.qlinear_group", first.name, [self.arg(first.args[0], first.name), ("list", biases),
                                                    ("list", params)], [self.slot(n.name) for n in members])
        self.grouped.update(n.name for n in members[1:])
        return True

    def _program(self, inputs: list[int], outputs: list[int]) -> Any:
        # drop op calls whose values nobody reads (float paths an int8 shadow replaced)
        live = set(outputs)
        kept = []
        for op, node, out, args in reversed(self.code):
            if any(o in live for o in (out if isinstance(out, list) else [out])):
                kept.append((op, node, out, args))
                live.update(_refs(args))
        self.code = kept[::-1]
        last_use: dict[int, int] = {}
        for i, (_, _, _, args) in enumerate(self.code):
            for s in _refs(args):
                last_use[s] = i
        keep = set(outputs)
        release: list[list[int]] = [[] for _ in self.code]
        for s, i in last_use.items():
            if s not in keep:
                release[i].append(s)
        for i, (_, _, out, _) in enumerate(self.code):  # values nobody reads
            for o in (out if isinstance(out, list) else [out]):
                if o not in last_use and o not in keep:
                    release[i].append(o)
        program = native.core().Program(len(self.slots), inputs, outputs)
        for (op, node, out, args), rel in zip(self.code, release):
            program.add(op, node, out, args, rel)
        return program

    def _kv_specs(self) -> dict[str, Spec]:
        specs = {}
        for node in self.graph.nodes:
            if node.op == KV_POINT and node.qkey is not None and node.qkey in self.qnodes:
                layer, which = int(node.args[1]), int(node.args[2])
                specs[past_input_name(layer, which)] = self.spec(self.qnodes[node.qkey]["inputs"]["x"])
        return specs

    def spec(self, spec: Mapping[str, Any]) -> Spec:
        key = ("spec", repr(sorted((k, repr(v)) for k, v in spec.items())))
        if key not in self.shared:
            self.shared[key] = Spec(spec, self.tensor)
        made: Spec = self.shared[key]
        return made

    def node(self, node: Node) -> None:
        q = self.qnodes.get(node.qkey) if node.qkey else None
        out = self.slot(node.name)
        if node.op == LINEAR and (q is not None or node.name in self.last_position_of):
            return self.linear(node, q, out)
        if q is None:
            if node.op == KV_POINT:
                self.slots[node.name] = self.slots[_ref(node.args[0], node).name]
                return None
            fused = self.fusions.match(node) if self.fusions is not None else None
            if fused is not None:  # the chain's other nodes drop out unless something else reads them
                self.emit(fused[0], node.name, [self.arg(v, node.name) for v in fused[1]], out)
                return None
            return self.plain(node, out)
        if node.op == BMM:
            return self.bmm(node, q, out)
        if node.op == KV_POINT:
            return self.kv_point(node, q, out)
        if node.op == EMBEDDING:
            return self.embedding(node, q, out)
        raise Unsupported(f"node {node.name}: no quantized form of {node.op}")

    def plain(self, node: Node, out: int, args: list[Any] | None = None) -> None:
        if node.op == BMM and (self._fused_attention(node, out) or self._float_bmm_on_int8(node, out)):
            return
        try:
            values = normalize(node.op, list(node.args) if args is None else args, dict(node.kwargs))
        except SchemaError as e:
            raise Unsupported(f"node {node.name}: {e}") from None
        self.emit(node.op, node.name, [self.arg(v, node.name) for v in values], out)
        if node.op in kv_shadow.VIEW_OPS:
            shadow = kv_shadow.follow(node, [self.shadows.get(r.name) for r in kv_shadow.tensor_refs(node)])
            if shadow is not None:
                self.shadows[node.name], self.shadow_nodes[node.name] = shadow, node

    def _float_bmm_on_int8(self, node: Node, out: int) -> bool:
        """A float bmm whose right operand is the int8 cache dequantized (P·V): dequantized per
        batch inside the op, the same float32 values and products as the float path's."""
        b = node.args[1] if len(node.args) > 1 else None
        shadow = self.shadows.get(b.name) if isinstance(b, Ref) and kv_shadow.ENABLED else None
        params = kv_shadow.batch_parameters(shadow) if shadow is not None else None
        if params is None or shadow is None or not isinstance(b, Ref):  # (params implies the others)
            return False
        kv = shadow.spec
        scale, zp = params
        spec = native.core().quant_spec(scale, zp, -1 if scale.size == 1 else 0, scale.size > 1, kv.qmin, kv.qmax,
                                        kv.storage, None, None, None, None)
        self.emit("mcq.bmm_int8b", node.name, [self.arg(node.args[0], node.name), ("ref", self.shadow_slot(b.name)),
                                               ("object", spec)], out)
        return True

    def _fused_attention(self, node: Node, out: int) -> bool:
        """P·V and the chain before it back to the int8 cache as one mcq.attention call
        (runtime.engine.attention), where it computes exactly what the unfused calls do: the
        Q·Kᵀ spec gives back the cache's integers and V dequantizes with its own parameters."""
        m = (self.attention.match(node)
             if self.attention is not None and attention.ENABLED and kv_shadow.ENABLED else None)
        if m is None:
            return False
        qk = self.qnodes.get(m.qk.qkey) if m.qk.qkey else None
        if qk is None:
            return self._fused_float_attention(node, m, out)
        if qk.get("weight") is not None:
            return False
        aspec, bspec = (qk.get("inputs") or {}).get("a"), (qk.get("inputs") or {}).get("b")
        k, v = self._cache_parts(m.k_parts), self._cache_parts(m.v_parts)
        if aspec is None or bspec is None or k is None or v is None:
            return False
        a, b = self.spec(aspec), self.spec(bspec)
        if a.rotated or b.rotated or a.storage != DTYPE_CODES["int8"]:
            return False
        shadows = []
        for kv in (k[1], v[1]):
            if kv.storage != DTYPE_CODES["int8"] or not (kv.per_tensor or kv.axis == 1):
                return False
            heads = m.heads if kv.per_tensor else kv.scale.size * m.rep
            if heads is None or (m.heads is not None and m.heads != heads) or any(h != heads for h in m.expanded):
                return False
            shadows.append(kv_shadow.Shadow(-1, kv, (), None if kv.per_tensor else 0, m.rep,
                                            None if kv.per_tensor else heads))
        params = kv_shadow.batch_parameters(shadows[1])
        if params is None or not kv_shadow.matches(shadows[0], b):
            return False
        scale, zp = params
        v_spec = native.core().quant_spec(scale, zp, -1 if scale.size == 1 else 0, scale.size > 1, v[1].qmin,
                                          v[1].qmax, v[1].storage, None, None, None, None)
        self.emit("mcq.attention", node.name, [
            self.arg(m.q, node.name), ("list", [("ref", s) for s in k[0]]), ("list", [("ref", s) for s in v[0]]),
            self.arg(m.mask, node.name), ("object", a.native), ("object", b.native), ("object", v_spec),
            ("int", m.rep), ("float", m.factor), ("bool", int(m.divide))], out)
        return True

    def _fused_float_attention(self, node: Node, m: attention.Match, out: int) -> bool:
        """The same chain over a float32 cache (no KV quantization): both bmms float."""
        parts = [*m.k_parts, *m.v_parts]
        if any(p.name in self.stored or p.name in self.pending or p.name in self.shadows for p in parts):
            return False  # an int8 cache the quantized form did not match
        heads = m.heads if m.heads is not None else m.expanded[0]
        if not isinstance(heads, int) or isinstance(heads, bool) or any(h != heads for h in m.expanded) \
                or heads % m.rep:
            return False
        none = ("none",)
        self.emit("mcq.attention", node.name, [
            self.arg(m.q, node.name), ("list", [self.arg(p, node.name) for p in m.k_parts]),
            ("list", [self.arg(p, node.name) for p in m.v_parts]), self.arg(m.mask, node.name), none, none, none,
            ("int", m.rep), ("float", m.factor), ("bool", int(m.divide))], out)
        return True

    def _cache_parts(self, parts: list[Ref]) -> tuple[list[int], Spec] | None:
        """The int8 slots of a cache's parts (past inputs, KV points) and their one spec."""
        slots, specs = [], []
        for p in parts:
            if p.name in self.stored:
                slots.append(self.stored[p.name])
                specs.append(self.stored_specs[p.name])
            elif p.name in self.shadows and self.shadows[p.name].shape and p.name in self.shadow_slots \
                    and any(s.name == p.name for s in self.graph.inputs):
                slots.append(self.shadow_slots[p.name])
                specs.append(self.shadows[p.name].spec)
            else:
                return None
        if not specs or any(s is not specs[0] for s in specs):
            return None
        return slots, specs[0]

    def shadow_slot(self, name: str) -> int:
        """The int8 value behind `name` (its view chain emitted on the integers, once)."""
        if name not in self.shadow_slots:
            node = self.shadow_nodes[name]
            values = normalize(node.op, list(node.args), dict(node.kwargs))
            first: tuple[str, Any]
            if node.op == "aten.cat.default":
                first = ("list", [("ref", self.shadow_slot(r.name)) for r in values[0]])
            else:
                first = ("ref", self.shadow_slot(values[0].name))
            args = [first] + [self.arg(v, node.name) for v in values[1:]]
            self.shadow_slots[name] = self.emit(node.op, node.name + "#int8", args)
        return self.shadow_slots[name]

    def linear(self, node: Node, q: Mapping[str, Any] | None, out: int) -> None:
        if node.name in self.groups and self.linear_group(self.groups[node.name]):
            return
        x = self.arg(node.args[0], node.name)
        if node.name in self.last_position_of:  # x[..., -1:, :]
            x = ("ref", self.emit("aten.slice.Tensor", node.name,
                                  [x, ("int", -2), ("int", -1), ("int", LAST), ("int", 1)]))
        bias = self.arg(node.args[2], node.name) if len(node.args) > 2 else ("none",)
        if q is None:
            self.emit(LINEAR, node.name, [x, self.arg(node.args[1], node.name), bias], out)
            return
        w_ref = node.args[1]
        if not isinstance(w_ref, TensorRef):
            raise Unsupported(f"node {node.name}: a quantized linear whose weight is not a stored tensor")
        weight_only = not (q.get("inputs") or {}).get("x")
        self.emit("mcq.wlinear" if weight_only else "mcq.qlinear", node.name,
                  [x, bias, ("object", self.linear_params(node, q, w_ref.name))], out)

    def linear_params(self, node: Node, q: Mapping[str, Any], weight: str) -> Any:
        """The native params of a quantized linear's weight, made once per (qkey, weight) and
        shared by the entry points."""
        key = ("qlinear", node.qkey, weight)
        if key not in self.shared:
            try:
                self.shared[key] = quant.linear_params(q, weight, self.tensor, self.release)
            except Unsupported as e:
                raise Unsupported(f"node {node.name} ({node.qkey}): {e}") from None
        return self.shared[key]

    def bmm(self, node: Node, q: Mapping[str, Any], out: int) -> None:
        aspec, bspec = q["inputs"].get("a"), q["inputs"].get("b")
        if aspec is None or bspec is None:
            raise Unsupported(f"node {node.name}: a bmm with one quantized operand")
        a, b = self.spec(aspec), self.spec(bspec)
        if a.rotated or b.rotated:
            raise Unsupported(f"node {node.name}: rotated bmm operands")
        shadow = self.shadows.get(node.args[1].name) if isinstance(node.args[1], Ref) else None
        if shadow is not None and kv_shadow.ENABLED and kv_shadow.matches(shadow, b):
            # K from the int8 cache as it is: the integers the quantizer would give back
            self.emit("mcq.qbmm_int8b", node.name, [self.arg(node.args[0], node.name),
                                                    ("ref", self.shadow_slot(node.args[1].name)),
                                                    ("object", a.native), ("object", b.native)], out)
            return
        self.emit("mcq.qbmm", node.name, [self.arg(node.args[0], node.name), self.arg(node.args[1], node.name),
                                          ("object", a.native), ("object", b.native)], out)

    def kv_point(self, node: Node, q: Mapping[str, Any], out: int) -> None:
        spec = self.spec(q["inputs"]["x"])
        stored = self.emit("mcq.quantize", node.name, [self.arg(node.args[0], node.name), ("object", spec.native)])
        self.stored[node.name] = stored
        self.stored_specs[node.name] = spec
        shadow = kv_shadow.source(stored, spec, ())
        if shadow is not None:
            self.shadows[node.name], self.shadow_slots[node.name] = shadow, stored
        self.emit("mcq.dequantize", node.name, [("ref", stored), ("object", spec.native)], out)

    def embedding(self, node: Node, q: Mapping[str, Any], out: int) -> None:
        spec = q.get("weight")
        table = node.args[0]
        if not spec or not isinstance(table, TensorRef):
            return self.plain(node, out)
        if spec.get("dtype") != "int8" or spec.get("granularity") != "channel" or spec.get("axis") != 0:
            raise Unsupported(f"node {node.name}: embedding table format {spec.get('dtype')}/{spec.get('granularity')}")
        params = self.spec({k: v for k, v in spec.items() if k not in ("smooth", "granularity", "axis")})
        smooth = self.constant(spec["smooth"]) if spec.get("smooth") else ("none",)
        self.emit("mcq.qembedding", node.name, [self.arg(node.args[1], node.name), self.constant(table.name),
                                               ("object", params.native), smooth], out)
        return None


def _ref(v: Any, node: Node) -> Ref:
    if not isinstance(v, Ref):
        raise Unsupported(f"node {node.name}: expected a graph value")
    return v


def _refs(args: list[Any]) -> list[int]:
    found: list[int] = []
    for a in args:
        if a[0] == "ref":
            found.append(a[1])
        elif a[0] == "list":
            found.extend(_refs(a[1]))
    return found


def plan(graph: Graph, tensor: quant.TensorSource, qformat: Mapping[str, Any] | None, shared: dict[Any, Any],
         last_position_logits: bool = False, release: Callable[[str], None] | None = None) -> Any:
    """(the native Program of `graph` at qlevel 4 where the qformat quantizes it, its inputs' dtype
    codes), or Unsupported."""
    return Planner(graph, tensor, qformat, shared, last_position_logits, release).build()

