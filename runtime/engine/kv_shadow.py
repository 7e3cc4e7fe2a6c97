"""The int8 KV cache through attention: which float values of a graph are exactly
`dequantize(int8 tensor, KV spec)` viewed or concatenated, so a quantized Q·Kᵀ can read the
integers instead of requantizing the floats.

Why: a decode step's graph dequantizes the whole past K of every layer, concatenates, repeats it
for grouped-query heads, and its Q·Kᵀ quantizes all of it again: O(context) float work per layer
and step, most of a long context's decode step. Requantizing a dequantized int8 value
with the same scale and zero point returns the same integer exactly (|q - zp| <= 255, two float32
roundings move it by < 3e-5 of a step), so reading the integers changes no value: the engine's
outputs stay bit for bit what they were.

A shadow follows the value's head axis through the view ops the toolkit's captures emit (cat
along another axis, unsqueeze, expand, clone, permute, transpose, the grouped-query merge
[B, KV, n_rep, ...] -> [B, KV*n_rep, ...] and the batch merge [B, H, ...] -> [B*H, ...]), so the
consumer's per-head parameters can be checked against the KV spec's per-head ones at load.
Anything else ends the shadow (the float path runs as before)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from runtime.ir import Node, Ref

ENABLED = True  # tests plan with it off to compare the two paths

# the ops a shadow follows (anything else ends it)
VIEW_OPS = frozenset({"aten.cat.default", "aten.unsqueeze.default", "aten.expand.default", "aten.clone.default",
                      "aten.alias.default", "aten.permute.default", "aten.transpose.int", "aten.view.default",
                      "aten._unsafe_view.default", "aten.reshape.default"})


@dataclass(frozen=True)
class Shadow:
    source: int                      # slot of the int8 tensor
    spec: Any                        # runtime.engine.quant.Spec of the KV point
    shape: tuple[int | None, ...]    # literal sizes where known (None: symbolic)
    axis: int | None                 # the head axis (None: per-tensor spec, any view keeps it)
    rep: int = 1                     # head index along axis // rep = the spec's parameter
    modulus: int | None = None       # after a batch merge: index % modulus first


def source(slot: int, spec: Any, shape: Sequence[int | str]) -> Shadow | None:
    """The shadow of a KV tensor [B, KV, T, D] quantized with `spec` (per tensor or per head on
    axis 1), or None."""
    if spec.per_tensor:
        return Shadow(slot, spec, tuple(s if isinstance(s, int) else None for s in shape), None)
    if spec.axis != 1:
        return None
    return Shadow(slot, spec, tuple(s if isinstance(s, int) else None for s in shape), 1)


def _literal(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def follow(node: Node, inputs: Sequence[Shadow | None]) -> Shadow | None:
    """The shadow of `node`'s value from its tensor input's shadow(s), or None."""
    op = node.op
    if op not in VIEW_OPS or not inputs or any(s is None for s in inputs):
        return None
    s = inputs[0]
    assert s is not None
    rank = len(s.shape)
    if op == "aten.cat.default":
        if any(t.spec is not s.spec or t.axis != s.axis or t.rep != s.rep or t.modulus != s.modulus
               for t in inputs if t is not None):
            return None
        dim = _literal(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
        ranks = [len(t.shape) for t in inputs if t is not None and t.shape]
        if dim is None or not ranks:
            return None
        rank = ranks[0]
        dim %= rank
        if dim == s.axis:
            return None
        known = next(t.shape for t in inputs if t is not None and len(t.shape) == rank)
        return replace(s, shape=tuple(None if i == dim else known[i] for i in range(rank)))
    if s.axis is not None and s.axis >= rank:  # a shape nobody stated (a KV point's own value)
        return None
    if op in ("aten.clone.default", "aten.alias.default"):
        return s
    if op == "aten.unsqueeze.default":
        d = _literal(node.args[1])
        if d is None:
            return None
        d %= rank + 1
        shape = s.shape[:d] + (1,) + s.shape[d:]
        return replace(s, shape=shape, axis=None if s.axis is None else s.axis + (d <= s.axis))
    if op == "aten.expand.default":
        sizes = node.args[1]
        if not isinstance(sizes, list) or len(sizes) < rank:
            return None
        lead = len(sizes) - rank
        expanded: list[int | None] = []
        for i, v in enumerate(sizes):
            old = s.shape[i - lead] if i >= lead else 1
            lit = _literal(v)
            expanded.append(old if lit == -1 else lit)
        if s.axis is not None and expanded[s.axis + lead] != s.shape[s.axis]:  # the head axis itself expanded
            return None
        return replace(s, shape=tuple(expanded), axis=None if s.axis is None else s.axis + lead)
    if op in ("aten.permute.default", "aten.transpose.int"):
        given: list[int | None]
        if op == "aten.permute.default":
            given = [_literal(d) for d in node.args[1]]
        else:
            d0, d1 = _literal(node.args[1]), _literal(node.args[2])
            if d0 is None or d1 is None:
                return None
            given = list(range(rank))
            given[d0 % rank], given[d1 % rank] = given[d1 % rank], given[d0 % rank]
        if any(d is None for d in given) or len(given) != rank:
            return None
        dims = [d % rank for d in given if d is not None]  # (none is)
        return replace(s, shape=tuple(s.shape[d] for d in dims),
                       axis=None if s.axis is None else dims.index(s.axis))
    # view / reshape
    sizes = node.args[1]
    if not isinstance(sizes, list):
        return None
    new = tuple(_literal(v) for v in sizes)
    if s.axis is None:
        return replace(s, shape=new)
    ax = s.axis
    heads = s.shape[ax]
    if heads is None:
        return None
    if len(new) == rank and new[: ax + 1] == s.shape[: ax + 1] and new[ax] is not None:
        return replace(s, shape=new)  # the head axis and all before it unchanged
    n_rep = s.shape[ax + 1] if ax + 1 < rank else None
    if len(new) == rank - 1 and n_rep is not None and new[:ax] == s.shape[:ax] \
            and new[ax] == heads * n_rep and new[ax + 1:] == s.shape[ax + 2:] and s.modulus is None:
        # grouped-query merge: [.., KV, n_rep, ..] -> [.., KV * n_rep, ..]; new head h -> KV head h // n_rep
        return replace(s, shape=new, rep=s.rep * n_rep)
    if ax == 1 and len(new) == rank - 1 and new[1:] == s.shape[2:] and s.modulus is None:
        # batch merge: [B, H, ..] -> [B * H, ..]; index i -> head i % H
        return replace(s, shape=new, axis=0, modulus=heads)
    return None


def matches(s: Shadow, consumer: Any, heads: int | None = None) -> bool:
    """Whether quantizing the shadowed float values with `consumer` (a Spec) gives back the int8
    values exactly: same grid, and along the bmm's batch axis the same scale and zero point as
    the KV spec's for every head."""
    kv = s.spec
    if consumer.qmin != kv.qmin or consumer.qmax != kv.qmax or consumer.storage != kv.storage or \
            consumer.smooth is not None or consumer.outliers is not None or consumer.rotated or \
            kv.smooth is not None or kv.outliers is not None or kv.rotated:
        return False
    if s.axis is None:  # per-tensor KV: the consumer must be per tensor with the same parameters
        return consumer.per_tensor and _same(consumer, 0, kv, 0)
    if s.axis != 0 or s.modulus is None:
        return False
    h = s.modulus
    if consumer.per_tensor:
        return all(_same(consumer, 0, kv, i // s.rep) for i in range(h))
    if not consumer.per_head or consumer.axis != 0 or h % len(consumer.scale):
        return False
    return all(_same(consumer, i % len(consumer.scale), kv, i // s.rep) for i in range(h))


def batch_parameters(s: Shadow) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) per index of a bmm operand's batch axis (its first H, repeating), for
    dequantizing the shadowed integers there; None where the shadow does not say."""
    kv = s.spec
    if kv.smooth is not None or kv.outliers is not None or kv.rotated:
        return None
    if s.axis is None:
        return kv.scale[:1].copy(), kv.zero_point[:1].copy()
    if s.axis != 0 or s.modulus is None:
        return None
    source = np.arange(s.modulus) // s.rep
    zps = kv.zero_point if kv.zero_point.size > 1 else np.repeat(kv.zero_point, kv.scale.size)
    return np.ascontiguousarray(kv.scale[source]), np.ascontiguousarray(zps[source])


def _same(a: Any, i: int, b: Any, j: int) -> bool:
    za = a.zero_point[0 if a.zero_point.size == 1 else i]
    zb = b.zero_point[0 if b.zero_point.size == 1 else j]
    return bool(np.float32(a.scale[i]) == np.float32(b.scale[j]) and za == zb)


def tensor_refs(node: Node) -> list[Ref]:
    """The node's tensor operands that a shadow can come from (cat: its list; else the first)."""
    if node.op == "aten.cat.default":
        return [a for a in node.args[0] if isinstance(a, Ref)] if isinstance(node.args[0], list) else []
    return [node.args[0]] if node.args and isinstance(node.args[0], Ref) else []
