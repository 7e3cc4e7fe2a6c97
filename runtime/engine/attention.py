"""A layer's attention over the int8 KV cache as one engine op (`mcq.attention`,
runtime/csrc/ops_attention.cpp), matched on the graph's values from the P·V bmm back to the cache.

The form is transformers' eager attention as the toolkit captures it (Llama / SmolLM2 and the
other rotate-half families), with grouped-query heads or without:

    K = cat([past K, kv_point(k)], -2) | kv_point(k)             (the same for V)
    K' = view(clone(expand(unsqueeze(K, 2), [B, KV, rep, L, D])), [B, H, L, D])   (when rep > 1)
    S = view(bmm(Q3, view(expand(permute(K', [0, 1, 3, 2]), ...), [B*H, D, L])), [B, H, S, L])
    P = softmax(S * c + mask, -1)       (or S / c)
    out = bmm(view(expand([clone] P, ...), [B*H, S, L]), view(expand(V', ...), [B*H, L, D]))

where either Q·Kᵀ is a quantized bmm whose K spec gives back the int8 cache's integers
(kv_shadow.matches) and P·V a float bmm over the dequantized V, or the cache is float32 and
both bmms are float. The fused op reads the cache's parts in place (no cat, no repeat copy)
and computes every value as the unfused program does (bit for bit, tests/test_engine_fusion.py);
anything else, or a graph where a size that must be a literal is not, stays unfused."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.engine.schemas import SchemaError, normalize
from runtime.ir import Node, Ref

ENABLED = True  # tests plan with it off and compare the two programs bit for bit
VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")


@dataclass(frozen=True)
class Match:
    qk: Node              # the Q·Kᵀ bmm (quantized: its qnode gives the Q and K specs)
    q: Ref                # its left operand [B*H, S, D]
    k_parts: list[Ref]    # K along the sequence: graph inputs (the past cache) or KV points
    v_parts: list[Ref]
    k_view: Ref           # Q·Kᵀ's right operand and P·V's: where the planner's shadows say the heads
    v_view: Ref
    mask: Ref
    factor: float
    divide: bool
    rep: int
    heads: int | None     # H where repeat_kv's literal states it
    expanded: tuple[Any, ...]  # the head sizes P, Kᵀ and V are expanded to (must be H: no broadcast)


class Matcher:
    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes

    def _args(self, v: Any, *ops: str) -> tuple[Node, list[Any]] | None:
        if not isinstance(v, Ref):
            return None
        n = self.nodes.get(v.name)
        if n is None or n.op not in ops:
            return None
        try:
            return n, normalize(n.op, list(n.args), dict(n.kwargs))
        except SchemaError:
            return None

    def _through(self, v: Any, ops: tuple[str, ...]) -> Any:
        """v with any of `ops` (single-input view-like nodes) stepped over."""
        while True:
            found = self._args(v, *ops)
            if found is None:
                return v
            v = found[1][0]

    def match(self, pv: Node) -> Match | None:
        if pv.op != "aten.bmm.default" or len(pv.args) != 2:
            return None
        p3, v3 = pv.args
        # P: view(expand([clone] softmax(A, -1, False)))
        view = self._args(p3, *VIEWS)
        expand = self._args(view[1][0], "aten.expand.default") if view else None
        if view is None or expand is None or len(view[1][1]) != 3 or len(expand[1][1]) != 4:
            return None
        soft = self._args(self._through(expand[1][0], ("aten.clone.default",)), "aten._softmax.default")
        if soft is None or soft[1][1] not in (-1, 3) or soft[1][2] is not False:
            return None
        add = self._args(soft[1][0], "aten.add.Tensor")
        if add is None or add[1][2] != 1:
            return None
        for scaled, mask in ((add[1][0], add[1][1]), (add[1][1], add[1][0])):
            found = self._scaled_scores(scaled)
            if found is not None and isinstance(mask, Ref):
                qk, factor, divide = found
                break
        else:
            return None
        q, k3 = qk.args[0], qk.args[1]
        k = self._keys(k3)
        v = self._values(v3)
        if k is None or v is None or not isinstance(q, Ref) or k[0][1] != v[0][1] or k[0][2] != v[0][2]:
            return None
        (k_parts, rep, heads), (v_parts, _, _) = k[0], v[0]
        return Match(qk, q, k_parts, v_parts, k3, v3, mask, factor, divide, rep, heads,
                     (expand[1][1][1], k[1], v[1]))

    def _scaled_scores(self, v: Any) -> tuple[Node, float, bool] | None:
        """(the Q·Kᵀ bmm, c, divide) where v = view(bmm, [B, H, S, L]) * c (or / c)."""
        for op, divide in (("aten.mul.Tensor", False), ("aten.div.Tensor", True)):
            found = self._args(v, op)
            if found is None:
                continue
            a = found[1]
            pairs = ((a[0], a[1]),) if divide else ((a[0], a[1]), (a[1], a[0]))
            for scores, c in pairs:
                if not _number(c):
                    continue
                view = self._args(scores, *VIEWS)
                if view is None or len(view[1][1]) != 4:
                    continue
                bmm = self._args(view[1][0], "aten.bmm.default")
                if bmm is not None and len(bmm[0].args) == 2:
                    return bmm[0], float(c), divide
        return None

    def _keys(self, k3: Any) -> tuple[tuple[list[Ref], int, int | None], Any] | None:
        """(K's parts, rep and H, the expanded head size) from Q·Kᵀ's right operand
        view(expand(permute(K', [0, 1, 3, 2])))."""
        view = self._args(k3, *VIEWS)
        expand = self._args(view[1][0], "aten.expand.default") if view else None
        perm = self._args(expand[1][0], "aten.permute.default") if expand else None
        if (view is None or expand is None or perm is None or len(view[1][1]) != 3 or len(expand[1][1]) != 4
                or list(perm[1][1]) not in ([0, 1, 3, 2], [0, 1, -1, -2])):
            return None
        found = self._repeated(perm[1][0])
        return None if found is None else (found, expand[1][1][1])

    def _values(self, v3: Any) -> tuple[tuple[list[Ref], int, int | None], Any] | None:
        view = self._args(v3, *VIEWS)
        expand = self._args(view[1][0], "aten.expand.default") if view else None
        if view is None or expand is None or len(view[1][1]) != 3 or len(expand[1][1]) != 4:
            return None
        found = self._repeated(expand[1][0])
        return None if found is None else (found, expand[1][1][1])

    def _repeated(self, v: Any) -> tuple[list[Ref], int, int | None] | None:
        """(parts, rep, H) of repeat_kv(cache) = view(clone(expand(unsqueeze(cache, 2), [B, KV, rep, L, D])),
        [B, KV * rep, L, D]), or of the cache itself (rep 1)."""
        rep, heads = 1, None
        view = self._args(v, *VIEWS)
        if view is not None:
            clone = self._args(view[1][0], "aten.clone.default")
            expand = self._args(clone[1][0], "aten.expand.default") if clone else None
            unsq = self._args(expand[1][0], "aten.unsqueeze.default") if expand else None
            if expand is None or unsq is None or unsq[1][1] != 2:
                return None
            sizes, merged = list(expand[1][1]), list(view[1][1])
            if len(sizes) != 5 or len(merged) != 4 or not all(_int(x) for x in (sizes[1], sizes[2], merged[1])) \
                    or sizes[2] < 1 or merged[1] != sizes[1] * sizes[2] \
                    or not (sizes[0] == merged[0] and sizes[3] == merged[2] and sizes[4] == merged[3]):
                return None
            rep, heads, v = sizes[2], merged[1], unsq[1][0]
        cat = self._args(v, "aten.cat.default")
        if cat is not None:
            parts, dim = cat[1][0], cat[1][1]
            if dim not in (-2, 2) or not isinstance(parts, (list, tuple)) or not all(isinstance(p, Ref) for p in parts):
                return None
            return list(parts), rep, heads
        return ([v], rep, heads) if isinstance(v, Ref) else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
