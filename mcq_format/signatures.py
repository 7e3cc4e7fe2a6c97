"""The signature of every opset op: its parameters, their kinds, defaults and which are keyword-only.

Written in ATen's schema notation (the ``aten.*`` lines are PyTorch's own schemas, so a graph
bound against them binds the same way in the runtime; ``TensorLike``: a tensor or a Python
number, which PyTorch's arithmetic overloads accept in either place); parsed once at import. The graph type
check (:mod:`mcq_format.graph_types`) binds each node's ``args`` / ``kwargs`` against its line:
arity, names, and the kind of every argument (spec 5.4a).
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from .opset import OPSET_V1

_TAKES = "ScalarType? dtype=None, Layout? layout=None, Device? device=None, bool? pin_memory=None"
_SCHEMAS: Final[dict[str, str]] = {
    "_operator.add": "Number a, Number b",
    "_operator.floordiv": "Number a, Number b",
    "_operator.getitem": "Sequence a, int b",
    "_operator.mul": "Number a, Number b",
    "_operator.neg": "Number a",
    "_operator.sub": "Number a, Number b",
    "aten._log_softmax.default": "Tensor self, int dim, bool half_to_float",
    "aten._softmax.default": "Tensor self, int dim, bool half_to_float",
    "aten._to_copy.default": "Tensor self, *, ScalarType? dtype=None, Layout? layout=None, Device? device=None, "
                             "bool? pin_memory=None, bool non_blocking=False, MemoryFormat? memory_format=None",
    "aten._unsafe_view.default": "Tensor self, SymInt[] size",
    "aten.add.Tensor": "TensorLike self, TensorLike other, *, Scalar alpha=1",
    "aten.addmm.default": "Tensor self, Tensor mat1, Tensor mat2, *, Scalar beta=1, Scalar alpha=1",
    "aten.alias.default": "Tensor self",
    "aten.any.dim": "Tensor self, int dim, bool keepdim=False",
    "aten.arange.default": f"Scalar end, *, {_TAKES}",
    "aten.arange.start_step": f"Scalar start, Scalar end, Scalar step=1, *, {_TAKES}",
    "aten.bitwise_and.Tensor": "Tensor self, Tensor other",
    "aten.bitwise_not.default": "Tensor self",
    "aten.bitwise_or.Tensor": "Tensor self, Tensor other",
    "aten.bmm.default": "Tensor self, Tensor mat2",
    "aten.cat.default": "Tensor[] tensors, int dim=0",
    "aten.clamp.default": "Tensor self, Scalar? min=None, Scalar? max=None",
    "aten.clone.default": "Tensor self, *, MemoryFormat? memory_format=None",
    "aten.cos.default": "Tensor self",
    "aten.cumsum.default": "Tensor self, int dim, *, ScalarType? dtype=None",
    "aten.div.Tensor": "TensorLike self, TensorLike other",
    "aten.embedding.default": "Tensor weight, Tensor indices, SymInt padding_idx=-1, bool scale_grad_by_freq=False, "
                              "bool sparse=False",
    "aten.eq.Scalar": "Tensor self, Scalar other",
    "aten.erf.default": "Tensor self",
    "aten.exp.default": "Tensor self",
    "aten.expand.default": "Tensor self, SymInt[] size, *, bool implicit=False",
    "aten.full.default": f"SymInt[] size, Scalar fill_value, *, {_TAKES}",
    "aten.gather.default": "Tensor self, int dim, Tensor index, *, bool sparse_grad=False",
    "aten.ge.Scalar": "Tensor self, Scalar other",
    "aten.ge.Tensor": "Tensor self, Tensor other",
    "aten.gelu.default": "Tensor self, *, str approximate='none'",
    "aten.gt.Tensor": "Tensor self, Tensor other",
    "aten.index.Tensor": "Tensor self, Tensor?[] indices",
    "aten.le.Tensor": "Tensor self, Tensor other",
    "aten.linear.default": "Tensor input, Tensor weight, Tensor? bias=None",
    "aten.logical_not.default": "Tensor self",
    "aten.lt.Tensor": "Tensor self, Tensor other",
    "aten.masked_fill.Scalar": "Tensor self, Tensor mask, Scalar value",
    "aten.matmul.default": "Tensor self, Tensor other",
    "aten.maximum.default": "Tensor self, Tensor other",
    "aten.mean.dim": "Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None",
    "aten.minimum.default": "Tensor self, Tensor other",
    "aten.mm.default": "Tensor self, Tensor mat2",
    "aten.mul.Tensor": "TensorLike self, TensorLike other",
    "aten.native_layer_norm.default": "Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
                                      "float eps",
    "aten.ne.Scalar": "Tensor self, Scalar other",
    "aten.neg.default": "Tensor self",
    "aten.new_ones.default": f"Tensor self, SymInt[] size, *, {_TAKES}",
    "aten.new_zeros.default": f"Tensor self, SymInt[] size, *, {_TAKES}",
    "aten.permute.default": "Tensor self, int[] dims",
    "aten.pow.Tensor_Scalar": "Tensor self, Scalar exponent",
    "aten.relu.default": "Tensor self",
    "aten.reshape.default": "Tensor self, SymInt[] shape",
    "aten.rsqrt.default": "Tensor self",
    "aten.scalar_tensor.default": f"Scalar s, *, {_TAKES}",
    "aten.select.int": "Tensor self, int dim, SymInt index",
    "aten.sigmoid.default": "Tensor self",
    "aten.silu.default": "Tensor self",
    "aten.sin.default": "Tensor self",
    "aten.slice.Tensor": "Tensor self, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1",
    "aten.split_with_sizes.default": "Tensor self, SymInt[] split_sizes, int dim=0",
    "aten.sqrt.default": "Tensor self",
    "aten.squeeze.dim": "Tensor self, int dim",
    "aten.sub.Tensor": "TensorLike self, TensorLike other, *, Scalar alpha=1",
    "aten.sum.dim_IntList": "Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None",
    "aten.sym_size.int": "Tensor self, int dim",
    "aten.t.default": "Tensor self",
    "aten.tanh.default": "Tensor self",
    "aten.transpose.int": "Tensor self, int dim0, int dim1",
    "aten.unsqueeze.default": "Tensor self, int dim",
    "aten.view.default": "Tensor self, SymInt[] size",
    "aten.where.self": "Tensor condition, Tensor self, Tensor other",
    "mcq.kv_point": "Tensor x, int layer, int which",
}

_PARAM = re.compile(r"(?P<kind>[A-Za-z\[\]?0-9]+) (?P<name>\w+)(?:=(?P<default>.+))?")
_DEFAULTS: Final[dict[str, object]] = {"None": None, "False": False, "True": True, "'none'": "none"}


class Param(NamedTuple):
    name: str
    kind: str  # "Tensor", "Tensor?", "Tensor[]", "Tensor?[]", "int", "SymInt[]", "Scalar", "ScalarType?", ...
    required: bool
    default: object
    keyword_only: bool


def _parse(schema: str) -> tuple[Param, ...]:
    params = []
    keyword_only = False
    for part in (p.strip() for p in schema.split(",")):
        if part == "*":
            keyword_only = True
            continue
        m = _PARAM.fullmatch(part)
        assert m, part
        default = m["default"]
        value = _DEFAULTS[default] if default in _DEFAULTS else (int(default) if default is not None else None)
        params.append(Param(m["name"], m["kind"].replace("SymInt", "int"), default is None, value, keyword_only))
    return tuple(params)


SIGNATURES: Final[dict[str, tuple[Param, ...]]] = {op: _parse(s) for op, s in _SCHEMAS.items()}
assert set(SIGNATURES) == OPSET_V1, "every opset op has a signature, and only those"
