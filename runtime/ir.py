"""The serialized graph: tagged, versioned data classes (spec: "Graph sections").

A graph section is plain msgpack data. Scalars (nil, bool, int, float) stand for themselves;
every other argument is a two-element list ``[tag, payload]`` so that a string can never be
mistaken for a reference and nothing in a file is ever looked up by name outside the opset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GRAPH_VERSION = 1

# Tags of non-scalar argument values.
REF = "ref"  # output of an earlier node or a graph input
TENSOR = "tensor"  # a tensor stored in the file (weight, constant, qparam)
DTYPE = "dtype"
LIST = "list"
STR = "str"
DEVICE = "device"
LAYOUT = "layout"
MEMORY_FORMAT = "memory_format"


@dataclass(frozen=True)
class Ref:
    """Reference to a graph input or an earlier node's output."""

    name: str


@dataclass(frozen=True)
class TensorRef:
    """Reference to a tensor stored in the bundle."""

    name: str


@dataclass(frozen=True)
class Symbol:
    """A named torch enum value (dtype, device, layout, memory format)."""

    tag: str
    name: str


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]

    def encode(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def accepts(self, shape: Any) -> bool:
        """Same rank and every fixed size equal (a symbolic size takes any value)."""
        return len(shape) == len(self.shape) and all(isinstance(d, str) or d == s for d, s in zip(self.shape, shape))

    @classmethod
    def decode(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], list(d["shape"]))


@dataclass
class Node:
    name: str
    op: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    qkey: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    name: str
    inputs: list[TensorSpec]
    nodes: list[Node]
    outputs: list[tuple[str, Any]]  # (output name, value)

    def encode(self) -> dict[str, Any]:
        nodes = []
        for n in self.nodes:
            d: dict[str, Any] = {
                "name": n.name,
                "op": n.op,
                "args": [encode_value(a) for a in n.args],
                "kwargs": {k: encode_value(v) for k, v in n.kwargs.items()},
            }
            if n.qkey is not None:
                d["qkey"] = n.qkey
            if n.meta:
                d["meta"] = n.meta
            nodes.append(d)
        return {
            "version": GRAPH_VERSION,
            "name": self.name,
            "inputs": [i.encode() for i in self.inputs],
            "nodes": nodes,
            "outputs": [{"name": k, "value": encode_value(v)} for k, v in self.outputs],
        }

    @classmethod
    def decode(cls, d: dict[str, Any]) -> Graph:
        nodes = [
            Node(
                name=n["name"],
                op=n["op"],
                args=[decode_value(a) for a in n["args"]],
                kwargs={k: decode_value(v) for k, v in n.get("kwargs", {}).items()},
                qkey=n.get("qkey"),
                meta=dict(n.get("meta", {})),
            )
            for n in d["nodes"]
        ]
        return cls(
            name=d["name"],
            inputs=[TensorSpec.decode(i) for i in d["inputs"]],
            nodes=nodes,
            outputs=[(o["name"], decode_value(o["value"])) for o in d["outputs"]],
        )

    def tensor_names(self) -> set[str]:
        """Names of the stored tensors this graph reads."""
        found: set[str] = set()

        def visit(v: Any) -> None:
            if isinstance(v, TensorRef):
                found.add(v.name)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    visit(x)

        for n in self.nodes:
            visit(n.args)
            visit(list(n.kwargs.values()))
        return found


def encode_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, Ref):
        return [REF, v.name]
    if isinstance(v, TensorRef):
        return [TENSOR, v.name]
    if isinstance(v, Symbol):
        return [v.tag, v.name]
    if isinstance(v, str):
        return [STR, v]
    if isinstance(v, (list, tuple)):
        return [LIST, [encode_value(x) for x in v]]
    raise TypeError(f"cannot serialize graph argument of type {type(v).__name__}: {v!r}")


def decode_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)):
        raise ValueError(f"malformed graph value {v!r}")
    tag, payload = v
    if tag == REF:
        return Ref(payload)
    if tag == TENSOR:
        return TensorRef(payload)
    if tag == STR:
        return payload
    if tag == LIST:
        return [decode_value(x) for x in payload]
    if tag in (DTYPE, DEVICE, LAYOUT, MEMORY_FORMAT):
        return Symbol(tag, payload)
    raise ValueError(f"unknown graph value tag {tag!r}")
