"""Integer values in the graph type check (spec 5.4a): positions, masks and indices computed from
sizes and constants, evaluated with numpy so that every index a graph builds is checked
against the tensor it indexes.

The check's inputs are `input_ids` of zeros and an `attention_mask` of ones (a valid prompt);
other inputs and every floating tensor have no value. An integer or bool tensor gets a value
when all its operands have one and it holds at most VALUE_LIMIT elements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .shape_rules import T, dim, fail

VALUE_LIMIT = 1 << 16
_NUMPY = {"bool": np.bool_, "uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32,
          "int64": np.int64}
INPUT_VALUES: dict[str, int] = {"input_ids": 0, "attention_mask": 1}


class _Unknown(Exception):
    pass


def _v(x: Any) -> Any:
    """An operand's value: a Python scalar, or a tensor's numpy value."""
    if isinstance(x, T):
        if x.value is None:
            raise _Unknown
        return x.value
    if isinstance(x, (bool, int)):
        return x
    raise _Unknown  # floats and everything else: no value tracked


def input_value(name: str, t: T) -> T:
    if name in INPUT_VALUES and t.dtype in _NUMPY and math.prod(t.shape) <= VALUE_LIMIT:
        return t._replace(value=np.full(t.shape, INPUT_VALUES[name], dtype=_NUMPY[t.dtype]))
    return t


def _check_range(index: Any, size: int, what: str, negative: bool) -> None:
    if isinstance(index, T) and index.value is not None and index.value.size:
        lo, hi = int(index.value.min()), int(index.value.max())
        if hi >= size or lo < (-size if negative else 0):
            fail(f"{what}: index values in [{lo}, {hi}] for a size of {size}")


def check_indices(op: str, a: dict[str, Any]) -> None:
    """Index tensors with values against the sizes they index (before the op runs)."""
    if op == "aten.embedding.default":
        _check_range(a["indices"], a["weight"].shape[0], "embedding", negative=False)
    elif op == "aten.gather.default":
        x = a["self"]
        _check_range(a["index"], x.shape[dim(a["dim"], len(x.shape))], "gather", negative=False)
    elif op == "aten.index.Tensor":
        for k, i in enumerate(a["indices"]):
            if i is not None:
                _check_range(i, a["self"].shape[k], f"index of dim {k}", negative=True)


def _reduce(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    def run(a: dict[str, Any]) -> Any:
        x = _v(a["self"])
        dims = a["dim"]
        axes = tuple(range(x.ndim)) if dims is None or dims == [] else \
            tuple(d % max(x.ndim, 1) for d in (dims if isinstance(dims, list) else [dims]))
        return fn(x, axis=axes, keepdims=a["keepdim"])
    return run


def _slice(a: dict[str, Any]) -> Any:
    x = _v(a["self"])
    d = a["dim"] % x.ndim
    return x[(slice(None),) * d + (slice(a["start"], a["end"], a["step"]),)]


def _index(a: dict[str, Any]) -> Any:
    x = _v(a["self"])
    return x[tuple(slice(None) if i is None else _v(i) for i in a["indices"])]


def _add(sign: int) -> Callable[[dict[str, Any]], Any]:
    return lambda a: np.add(_v(a["self"]), sign * _v(a["alpha"]) * np.asarray(_v(a["other"])))


_OPS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "aten.arange.default": lambda a: np.arange(_v(a["end"])),
    "aten.arange.start_step": lambda a: np.arange(_v(a["start"]), _v(a["end"]), _v(a["step"])),
    "aten.full.default": lambda a: np.full(a["size"], _v(a["fill_value"])),
    "aten.scalar_tensor.default": lambda a: np.asarray(_v(a["s"])),
    "aten.new_zeros.default": lambda a: np.zeros(a["size"]),
    "aten.new_ones.default": lambda a: np.ones(a["size"]),
    "aten.view.default": lambda a: _v(a["self"]),
    "aten._unsafe_view.default": lambda a: _v(a["self"]),
    "aten.reshape.default": lambda a: _v(a["self"]),
    "aten.unsqueeze.default": lambda a: _v(a["self"]),
    "aten.squeeze.dim": lambda a: _v(a["self"]),
    "aten.expand.default": lambda a: _v(a["self"]),
    "aten.clone.default": lambda a: _v(a["self"]),
    "aten.alias.default": lambda a: _v(a["self"]),
    "aten._to_copy.default": lambda a: _v(a["self"]),
    "aten.permute.default": lambda a: np.transpose(_v(a["self"]), a["dims"]),
    "aten.transpose.int": lambda a: np.swapaxes(_v(a["self"]), a["dim0"], a["dim1"]),
    "aten.t.default": lambda a: np.transpose(_v(a["self"])),
    "aten.slice.Tensor": _slice,
    "aten.select.int": lambda a: np.take(_v(a["self"]), a["index"], axis=a["dim"]),
    "aten.cat.default": lambda a: np.concatenate([_v(t) for t in a["tensors"]], axis=a["dim"]),
    "aten.index.Tensor": _index,
    "aten.add.Tensor": _add(1),
    "aten.sub.Tensor": _add(-1),
    "aten.mul.Tensor": lambda a: np.multiply(_v(a["self"]), _v(a["other"])),
    "aten.eq.Scalar": lambda a: np.equal(_v(a["self"]), _v(a["other"])),
    "aten.ne.Scalar": lambda a: np.not_equal(_v(a["self"]), _v(a["other"])),
    "aten.ge.Scalar": lambda a: np.greater_equal(_v(a["self"]), _v(a["other"])),
    "aten.ge.Tensor": lambda a: np.greater_equal(_v(a["self"]), _v(a["other"])),
    "aten.gt.Tensor": lambda a: np.greater(_v(a["self"]), _v(a["other"])),
    "aten.le.Tensor": lambda a: np.less_equal(_v(a["self"]), _v(a["other"])),
    "aten.lt.Tensor": lambda a: np.less(_v(a["self"]), _v(a["other"])),
    "aten.bitwise_and.Tensor": lambda a: np.bitwise_and(_v(a["self"]), _v(a["other"])),
    "aten.bitwise_or.Tensor": lambda a: np.bitwise_or(_v(a["self"]), _v(a["other"])),
    "aten.bitwise_not.default": lambda a: np.invert(_v(a["self"])),
    "aten.logical_not.default": lambda a: np.logical_not(_v(a["self"])),
    "aten.where.self": lambda a: np.where(_v(a["condition"]), _v(a["self"]), _v(a["other"])),
    "aten.maximum.default": lambda a: np.maximum(_v(a["self"]), _v(a["other"])),
    "aten.minimum.default": lambda a: np.minimum(_v(a["self"]), _v(a["other"])),
    "aten.clamp.default": lambda a: np.clip(_v(a["self"]),
                                            *(None if v is None else _v(v) for v in (a["min"], a["max"]))),
    "aten.sum.dim_IntList": _reduce(np.sum),
    "aten.any.dim": _reduce(np.any),
    "aten.cumsum.default": lambda a: np.cumsum(_v(a["self"]), axis=a["dim"] % max(_v(a["self"]).ndim, 1)),
    "aten.gather.default": lambda a: np.take_along_axis(_v(a["self"]), _v(a["index"]), axis=a["dim"]),
}


def with_value(op: str, a: dict[str, Any], out: Any) -> Any:
    """The op's result with its value where it has one (integer and bool tensors only)."""
    if not isinstance(out, T) or out.dtype not in _NUMPY or math.prod(out.shape) > VALUE_LIMIT or op not in _OPS:
        return out
    try:
        with np.errstate(all="ignore"):
            value = np.asarray(_OPS[op](a))
        if value.shape != out.shape:  # views keep their operand's values; expand / scalars broadcast
            value = value.reshape(out.shape) if value.size == math.prod(out.shape) else \
                np.broadcast_to(value, out.shape)
        return out._replace(value=value.astype(_NUMPY[out.dtype]))
    except (_Unknown, ValueError, IndexError, TypeError, OverflowError):  # no value: nothing to check with it
        return out
