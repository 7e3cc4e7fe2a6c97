"""The op allow-list: graph nodes may only name these ops.

Op names are plain strings; nothing is ever resolved or imported by name.
To add an op, add it to the literal below (keep it sorted) and to the
"Opset v1" list in ``spec/mcq-format.md``, with its implementation in ``runtime/ops.py``: the
list holds only ops a reader can run (a test checks the runtime implements every one).
"""

from __future__ import annotations

from typing import Final

OPSET_V1: Final[frozenset[str]] = frozenset(
    {
        "_operator.add",
        "_operator.floordiv",
        "_operator.getitem",
        "_operator.mul",
        "_operator.neg",
        "_operator.sub",
        "aten._log_softmax.default",
        "aten._softmax.default",
        "aten._to_copy.default",
        "aten._unsafe_view.default",
        "aten.add.Tensor",
        "aten.addmm.default",
        "aten.alias.default",
        "aten.any.dim",
        "aten.arange.default",
        "aten.arange.start_step",
        "aten.bitwise_and.Tensor",
        "aten.bitwise_not.default",
        "aten.bitwise_or.Tensor",
        "aten.bmm.default",
        "aten.cat.default",
        "aten.clamp.default",
        "aten.clone.default",
        "aten.cos.default",
        "aten.cumsum.default",
        "aten.div.Tensor",
        "aten.embedding.default",
        "aten.eq.Scalar",
        "aten.erf.default",
        "aten.exp.default",
        "aten.expand.default",
        "aten.full.default",
        "aten.gather.default",
        "aten.ge.Scalar",
        "aten.ge.Tensor",
        "aten.gelu.default",
        "aten.gt.Tensor",
        "aten.index.Tensor",
        "aten.le.Tensor",
        "aten.linear.default",
        "aten.logical_not.default",
        "aten.lt.Tensor",
        "aten.masked_fill.Scalar",
        "aten.matmul.default",
        "aten.maximum.default",
        "aten.mean.dim",
        "aten.minimum.default",
        "aten.mm.default",
        "aten.mul.Tensor",
        "aten.native_layer_norm.default",
        "aten.ne.Scalar",
        "aten.neg.default",
        "aten.new_ones.default",
        "aten.new_zeros.default",
        "aten.permute.default",
        "aten.pow.Tensor_Scalar",
        "aten.relu.default",
        "aten.reshape.default",
        "aten.rsqrt.default",
        "aten.scalar_tensor.default",
        "aten.select.int",
        "aten.sigmoid.default",
        "aten.silu.default",
        "aten.sin.default",
        "aten.slice.Tensor",
        "aten.split_with_sizes.default",
        "aten.sqrt.default",
        "aten.squeeze.dim",
        "aten.sub.Tensor",
        "aten.sum.dim_IntList",
        "aten.sym_size.int",
        "aten.t.default",
        "aten.tanh.default",
        "aten.transpose.int",
        "aten.unsqueeze.default",
        "aten.view.default",
        "aten.where.self",
        "mcq.kv_point",
    }
)

#: Allowed ops per opset version.
OPSETS: Final[dict[int, frozenset[str]]] = {1: OPSET_V1}


def is_allowed(name: object, opset_version: int = 1) -> bool:
    """True if ``name`` is an op of opset ``opset_version``."""
    return isinstance(name, str) and name in OPSETS.get(opset_version, frozenset())
