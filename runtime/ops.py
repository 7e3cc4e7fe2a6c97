"""Callables for the allowlisted opset (spec: "Opset v1").

A graph names its ops as strings; this table is the only way a string becomes a callable. It is
built once, at import, from the fixed name list in `mcq_format.opset` -- never from file contents.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch

from mcq_format.opset import OPSET_V1

KV_POINT = "mcq.kv_point"


def kv_point(x: torch.Tensor, layer: int, which: int) -> torch.Tensor:
    """Marks a tensor entering the KV cache; identity until lowering gives it a format."""
    return x


_PYTHON_OPS: dict[str, Callable[..., Any]] = {
    "_operator.add": operator.add,
    "_operator.sub": operator.sub,
    "_operator.mul": operator.mul,
    "_operator.floordiv": operator.floordiv,
    "_operator.neg": operator.neg,
    "_operator.getitem": operator.getitem,
}
_OWN_OPS: dict[str, Callable[..., Any]] = {KV_POINT: kv_point}


# Graphs are functional (no op of the opset writes into its input), so a view is its values:
# run as reshape, which equals view wherever view is defined and copies where a view's strides
# would not fit (e.g. after a clone whose memory format a file changed); spec 5.4a.
_AS_RESHAPE = frozenset({"aten.view.default", "aten._unsafe_view.default"})


def _aten(name: str) -> Callable[..., Any]:
    _, op, overload = ("aten.reshape.default" if name in _AS_RESHAPE else name).split(".")
    fn: Callable[..., Any] = getattr(getattr(torch.ops.aten, op), overload)
    return fn


def _build_table() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for name in sorted(OPSET_V1):
        if name in _PYTHON_OPS:
            table[name] = _PYTHON_OPS[name]
        elif name in _OWN_OPS:
            table[name] = _OWN_OPS[name]
        elif name.startswith("aten."):
            table[name] = _aten(name)
        # other mcq.* names are inserted by lowering, never read from a file graph
    return table


OPS: dict[str, Callable[..., Any]] = _build_table()

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
LAYOUTS = {"strided": torch.strided}
MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
}
