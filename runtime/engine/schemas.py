"""The ATen schemas the engine's planner normalizes a node's arguments against: every
parameter the engine op reads, in order, with its default (REQUIRED: none). Keyword-only
parameters that do not change values on the CPU (device, layout, memory format, ...) are
dropped (IGNORED). One table, torch-free, so loading a bundle for the engine needs no torch."""
from __future__ import annotations

from typing import Any

REQUIRED = object()
IGNORED = frozenset({"device", "layout", "pin_memory", "memory_format", "non_blocking", "implicit",
                     "sparse_grad", "padding_idx", "scale_grad_by_freq", "sparse", "half_to_float"})

_SELF = ("self", REQUIRED)
_OTHER = ("other", REQUIRED)
_DTYPE = ("dtype", None)

SCHEMAS: dict[str, tuple[tuple[str, Any], ...]] = {
    "_operator.add": (("a", REQUIRED), ("b", REQUIRED)),
    "_operator.sub": (("a", REQUIRED), ("b", REQUIRED)),
    "_operator.mul": (("a", REQUIRED), ("b", REQUIRED)),
    "_operator.floordiv": (("a", REQUIRED), ("b", REQUIRED)),
    "_operator.neg": (("a", REQUIRED),),
    "_operator.getitem": (("a", REQUIRED), ("b", REQUIRED)),
    "aten.sym_size.int": (_SELF, ("dim", REQUIRED)),
    "aten.view.default": (_SELF, ("size", REQUIRED)),
    "aten._unsafe_view.default": (_SELF, ("size", REQUIRED)),
    "aten.reshape.default": (_SELF, ("shape", REQUIRED)),
    "aten.permute.default": (_SELF, ("dims", REQUIRED)),
    "aten.transpose.int": (_SELF, ("dim0", REQUIRED), ("dim1", REQUIRED)),
    "aten.t.default": (_SELF,),
    "aten.expand.default": (_SELF, ("size", REQUIRED)),
    "aten.unsqueeze.default": (_SELF, ("dim", REQUIRED)),
    "aten.squeeze.dim": (_SELF, ("dim", REQUIRED)),
    "aten.slice.Tensor": (_SELF, ("dim", 0), ("start", None), ("end", None), ("step", 1)),
    "aten.select.int": (_SELF, ("dim", REQUIRED), ("index", REQUIRED)),
    "aten.alias.default": (_SELF,),
    "aten.clone.default": (_SELF,),
    "aten.cat.default": (("tensors", REQUIRED), ("dim", 0)),
    "aten.split_with_sizes.default": (_SELF, ("split_sizes", REQUIRED), ("dim", 0)),
    "aten.full.default": (("size", REQUIRED), ("fill_value", REQUIRED), _DTYPE),
    "aten.scalar_tensor.default": (("s", REQUIRED), _DTYPE),
    "aten.new_ones.default": (_SELF, ("size", REQUIRED), _DTYPE),
    "aten.new_zeros.default": (_SELF, ("size", REQUIRED), _DTYPE),
    "aten.arange.default": (("end", REQUIRED), _DTYPE),
    "aten.arange.start_step": (("start", REQUIRED), ("end", REQUIRED), ("step", 1), _DTYPE),
    "aten._to_copy.default": (_SELF, _DTYPE),
    "aten.embedding.default": (("weight", REQUIRED), ("indices", REQUIRED)),
    "aten.index.Tensor": (_SELF, ("indices", REQUIRED)),
    "aten.gather.default": (_SELF, ("dim", REQUIRED), ("index", REQUIRED)),
    "aten.add.Tensor": (_SELF, _OTHER, ("alpha", 1)),
    "aten.sub.Tensor": (_SELF, _OTHER, ("alpha", 1)),
    "aten.mul.Tensor": (_SELF, _OTHER),
    "aten.div.Tensor": (_SELF, _OTHER),
    "aten.maximum.default": (_SELF, _OTHER),
    "aten.minimum.default": (_SELF, _OTHER),
    "aten.bitwise_and.Tensor": (_SELF, _OTHER),
    "aten.bitwise_or.Tensor": (_SELF, _OTHER),
    "aten.eq.Scalar": (_SELF, _OTHER),
    "aten.ne.Scalar": (_SELF, _OTHER),
    "aten.ge.Scalar": (_SELF, _OTHER),
    "aten.ge.Tensor": (_SELF, _OTHER),
    "aten.gt.Tensor": (_SELF, _OTHER),
    "aten.le.Tensor": (_SELF, _OTHER),
    "aten.lt.Tensor": (_SELF, _OTHER),
    "aten.rsqrt.default": (_SELF,),
    "aten.sqrt.default": (_SELF,),
    "aten.exp.default": (_SELF,),
    "aten.sin.default": (_SELF,),
    "aten.cos.default": (_SELF,),
    "aten.tanh.default": (_SELF,),
    "aten.erf.default": (_SELF,),
    "aten.sigmoid.default": (_SELF,),
    "aten.silu.default": (_SELF,),
    "aten.relu.default": (_SELF,),
    "aten.gelu.default": (_SELF, ("approximate", "none")),
    "aten.neg.default": (_SELF,),
    "aten.logical_not.default": (_SELF,),
    "aten.bitwise_not.default": (_SELF,),
    "aten.pow.Tensor_Scalar": (_SELF, ("exponent", REQUIRED)),
    "aten.where.self": (("condition", REQUIRED), _SELF, _OTHER),
    "aten.masked_fill.Scalar": (_SELF, ("mask", REQUIRED), ("value", REQUIRED)),
    "aten.clamp.default": (_SELF, ("min", None), ("max", None)),
    "aten.sum.dim_IntList": (_SELF, ("dim", REQUIRED), ("keepdim", False), _DTYPE),
    "aten.mean.dim": (_SELF, ("dim", REQUIRED), ("keepdim", False), _DTYPE),
    "aten.any.dim": (_SELF, ("dim", REQUIRED), ("keepdim", False)),
    "aten.cumsum.default": (_SELF, ("dim", REQUIRED), _DTYPE),
    "aten._softmax.default": (_SELF, ("dim", REQUIRED), ("half_to_float", False)),
    "aten._log_softmax.default": (_SELF, ("dim", REQUIRED), ("half_to_float", False)),
    "aten.native_layer_norm.default": (("input", REQUIRED), ("normalized_shape", REQUIRED), ("weight", REQUIRED),
                                       ("bias", REQUIRED), ("eps", REQUIRED)),
    "aten.matmul.default": (_SELF, _OTHER),
    "aten.bmm.default": (_SELF, ("mat2", REQUIRED)),
    "aten.mm.default": (_SELF, ("mat2", REQUIRED)),
    "aten.linear.default": (("input", REQUIRED), ("weight", REQUIRED), ("bias", None)),
    "aten.addmm.default": (_SELF, ("mat1", REQUIRED), ("mat2", REQUIRED), ("beta", 1), ("alpha", 1)),
}

# string-valued parameters the engine takes as small integers
ENUMS: dict[tuple[str, str], dict[str, int]] = {
    ("aten.gelu.default", "approximate"): {"none": 0, "tanh": 1},
}


# positional parameters after an op's schema that do not change its values, dropped: the
# embedding's padding_idx, scale_grad_by_freq and sparse (gradients only; a model with a pad
# token, e.g. SmolLM2 with a float table, exports padding_idx)
TRAILING_IGNORED = {"aten.embedding.default": ("padding_idx", "scale_grad_by_freq", "sparse")}


class SchemaError(ValueError):
    """A node's arguments do not fit its op's schema."""


def normalize(op: str, args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """The node's arguments as the engine op takes them: positional, defaults filled, ignored
    keywords dropped. Raises SchemaError (op unknown to the engine, missing or extra argument)."""
    schema = SCHEMAS.get(op)
    if schema is None:
        raise SchemaError(f"the engine has no schema for {op}")
    names = [n for n, _ in schema]
    if len(args) > len(schema) + len(TRAILING_IGNORED.get(op, ())):
        raise SchemaError(f"{op}: {len(args)} positional arguments, the engine takes {len(schema)}")
    args = args[: len(schema)]
    values = list(args) + [REQUIRED] * (len(schema) - len(args))
    for key, value in kwargs.items():
        if key in names:
            values[names.index(key)] = value
        elif key not in IGNORED:
            raise SchemaError(f"{op}: unexpected keyword argument {key!r}")
    for i, ((name, default), value) in enumerate(zip(schema, values)):
        if value is REQUIRED:
            if default is REQUIRED:
                raise SchemaError(f"{op}: missing argument {name!r}")
            values[i] = default
        table = ENUMS.get((op, name))
        if table is not None:
            if values[i] not in table:
                raise SchemaError(f"{op}: {name}={values[i]!r} is not one of {sorted(table)}")
            values[i] = table[values[i]]
    return values
