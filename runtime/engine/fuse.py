"""Float chains the planner emits as one fused engine op (runtime/csrc/ops_fused.cpp).

Matched backwards from a chain's last node, on the graph's values only (names and metadata are
never trusted): the fused op replaces that node's call, and the chain's other nodes drop out of
the program when nothing else reads them (the planner's dead-code pass), so a match never
changes what another node sees. Each fused op computes the same float32 operations in the same
order as the unfused calls, so outputs are bit for bit those of the unfused program.

- RMSNorm: pow(x, 2) -> mean(-1, keepdim) -> add(eps) -> rsqrt -> mul(x, .) [-> mul(weight, .)]
- rotary: x * cos + cat(-x[..., h:], x[..., :h]) * sin (the rotate_half form: Llama, SmolLM2,
  GPT-NeoX style; GPT-J's interleaved form is not matched and runs unfused)
- SiLU and gate: (a * sigmoid(a)) * b
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.engine.schemas import SchemaError, normalize
from runtime.ir import Graph, Node, Ref, Symbol, TensorRef

ENABLED = True  # tests plan with it off and compare the two programs bit for bit
INT64_MAX = 2 ** 63 - 1

Fused = tuple[str, list[Any]]  # (engine op, its argument values: graph values and numbers)


class Matcher:
    def __init__(self, graph: Graph, tensor: Callable[[str], np.ndarray]) -> None:
        self.nodes: dict[str, Node] = {n.name: n for n in graph.nodes}
        self.input_ranks = {s.name: len(s.shape) for s in graph.inputs}
        self.tensor = tensor

    def match(self, node: Node) -> Fused | None:
        if not ENABLED:
            return None
        for form in (self._rms_norm, self._rotary, self._silu_mul):
            found = form(node)
            if found is not None:
                return found
        return None

    # -- helpers -------------------------------------------------------------------------------
    def _node(self, v: Any, op: str) -> list[Any] | None:
        """The normalized arguments of the node v names, if it is an `op` node without a qkey."""
        if not isinstance(v, Ref):
            return None
        n = self.nodes.get(v.name)
        if n is None or n.op != op or n.qkey is not None:
            return None
        try:
            return normalize(n.op, list(n.args), dict(n.kwargs))
        except SchemaError:
            return None

    def _args(self, node: Node, op: str) -> list[Any] | None:
        return self._node(Ref(node.name), op) if node.name in self.nodes else None

    def _rank(self, v: Any) -> int | None:
        """A value's rank where the graph states it (shape-giving ops, graph inputs)."""
        if not isinstance(v, Ref):
            return None
        if v.name in self.input_ranks:
            return self.input_ranks[v.name]
        n = self.nodes.get(v.name)
        if n is None or not n.args:
            return None
        if n.op in ("aten.permute.default", "aten.view.default", "aten.reshape.default",
                    "aten._unsafe_view.default", "aten.expand.default") and len(n.args) > 1 \
                and isinstance(n.args[1], (list, tuple)):
            return len(n.args[1])
        if n.op == "aten.unsqueeze.default":
            r = self._rank(n.args[0])
            return None if r is None else r + 1
        if n.op in ("aten.slice.Tensor", "aten.transpose.int", "aten.neg.default", "aten.clone.default"):
            return self._rank(n.args[0])
        return None

    def _float32_vector(self, v: Any) -> bool:
        if not isinstance(v, TensorRef):
            return False
        t = self.tensor(v.name)
        return t.dtype == np.float32 and t.ndim == 1

    # -- forms ---------------------------------------------------------------------------------
    def _rms_norm(self, node: Node) -> Fused | None:
        a = self._args(node, "aten.mul.Tensor")
        if a is None:
            return None
        for w, inner in ((a[0], a[1]), (a[1], a[0])):  # weight * normalized
            if self._float32_vector(w):
                core = self._rms_core(inner)
                if core is not None:
                    return "mcq.rms_norm", [core[0], w, core[1]]
        core = self._rms_core(Ref(node.name))
        return None if core is None else ("mcq.rms_norm", [core[0], None, core[1]])

    def _rms_core(self, v: Any) -> tuple[Ref, float] | None:
        """(x, eps) where v = x * rsqrt(mean(x^2, -1, keepdim) + eps)."""
        a = self._node(v, "aten.mul.Tensor")
        if a is None:
            return None
        for x, r in ((a[0], a[1]), (a[1], a[0])):
            rs = self._node(r, "aten.rsqrt.default")
            add = self._node(rs[0], "aten.add.Tensor") if rs else None
            if add is None or not _number(add[1]) or add[2] != 1:
                continue
            mean = self._node(add[0], "aten.mean.dim")
            rank = self._rank(x)
            if mean is None or not isinstance(mean[1], (list, tuple)) or len(mean[1]) != 1 \
                    or mean[1][0] not in ({-1} if rank is None else {-1, rank - 1}) \
                    or mean[2] is not True or mean[3] is not None:
                continue
            sq = self._node(mean[0], "aten.pow.Tensor_Scalar")
            if sq is None or not isinstance(x, Ref) or sq[0] != x or not _number(sq[1]) or float(sq[1]) != 2.0:
                continue
            return x, float(add[1])
        return None

    def _rotary(self, node: Node) -> Fused | None:
        a = self._args(node, "aten.add.Tensor")
        if a is None or a[2] != 1:
            return None
        for first, second in ((a[0], a[1]), (a[1], a[0])):
            m1, m2 = self._node(first, "aten.mul.Tensor"), self._node(second, "aten.mul.Tensor")
            if m1 is None or m2 is None:
                continue
            for rot, sin in ((m2[0], m2[1]), (m2[1], m2[0])):
                found = self._rotate_half(rot)
                if found is None:
                    continue
                x, half = found
                for xx, cos in ((m1[0], m1[1]), (m1[1], m1[0])):
                    if xx == x and isinstance(cos, Ref) and isinstance(sin, Ref):
                        return "mcq.rotary", [x, cos, sin, half]
        return None

    def _rotate_half(self, v: Any) -> tuple[Ref, int] | None:
        """(x, h) where v = cat([-x[..., h:], x[..., :h]], -1) and x's rank is known."""
        cat = self._node(v, "aten.cat.default")
        if cat is None or not isinstance(cat[0], (list, tuple)) or len(cat[0]) != 2:
            return None
        neg = self._node(cat[0][0], "aten.neg.default")
        high = self._node(neg[0], "aten.slice.Tensor") if neg else None
        low = self._node(cat[0][1], "aten.slice.Tensor")
        if high is None or low is None or high[0] != low[0] or not isinstance(low[0], Ref):
            return None
        rank = self._rank(low[0])
        if rank is None or rank < 1:
            return None
        last = {-1, rank - 1}
        h = low[3]
        if not (cat[1] in last and high[1] in last and low[1] in last and low[2] == 0 and _int(h)
                and 0 <= h < INT64_MAX and high[2] == h and high[3] == INT64_MAX and high[4] == 1 and low[4] == 1):
            return None
        return low[0], h

    def _silu_mul(self, node: Node) -> Fused | None:
        a = self._args(node, "aten.mul.Tensor")
        if a is None:
            return None
        for silu, gate in ((a[0], a[1]), (a[1], a[0])):
            m = self._node(silu, "aten.mul.Tensor")
            if m is None or not isinstance(gate, Ref):
                continue
            for x, s in ((m[0], m[1]), (m[1], m[0])):
                sig = self._node(s, "aten.sigmoid.default")
                if sig is not None and isinstance(x, Ref) and sig[0] == x:
                    return "mcq.silu_mul", [x, gate]
        return None


def float32_graph(graph: Graph) -> bool:
    """The fused ops take float32 only: a graph with float64 inputs or casts runs unfused."""
    if any(s.dtype == "float64" for s in graph.inputs):
        return False
    return not any(_names_float64(v) for n in graph.nodes for v in (*n.args, *n.kwargs.values()))


def _names_float64(v: Any) -> bool:
    if isinstance(v, Symbol):
        return v.tag == "dtype" and v.name == "float64"
    if isinstance(v, (list, tuple)):
        return any(_names_float64(x) for x in v)
    return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
