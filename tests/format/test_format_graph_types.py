"""The graph type check (spec 5.4a): one test per error class, mutants of a valid conformance
bundle with hashes re-signed; and the check's dtypes and shapes against what PyTorch computes."""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import numpy as np
import pytest

import mcq_format as m
from mcqfmt_helpers import VALID, conformance_generate
from mcq_format import graph_types, signatures
from mcq_format.bundle import read
from mcq_format.quant import WEIGHT_ARG

gen = conformance_generate()
BASE = VALID / "llama-mini-w8a8kv8.mcq"


@pytest.fixture(autouse=True)
def _original():
    gen.ORIGINAL = gen.Parts(BASE)


def expect(tmp_path: pathlib.Path, cls: type[m.McqFormatError], edit: Callable[[Any], Any], fragment: str) -> None:
    p = gen.Parts(BASE)
    edit(p)
    path = tmp_path / "mutant.mcq"
    path.write_bytes(p.build())
    with pytest.raises(cls) as info:
        m.validate(path)
    assert type(info.value) is cls, info.value
    assert fragment in info.value.message, info.value.message


def node(p: Any, op: str, entry: str = "decode") -> dict[str, Any]:
    return gen._node(p, op, entry)


def test_GraphSignatureError(tmp_path):
    cases = [
        (lambda p: node(p, "aten.unsqueeze.default")["args"].append(1), "3 positional arguments"),
        (lambda p: node(p, "aten.unsqueeze.default")["args"].__setitem__(1, ["str", "0"]), "argument 'dim'"),
        (lambda p: node(p, "aten.unsqueeze.default")["args"].pop(), "argument 'dim' of aten.unsqueeze.default is missing"),
        (lambda p: node(p, "aten.unsqueeze.default")["kwargs"].__setitem__("dim", 1), "given twice"),
        (lambda p: node(p, "aten.linear.default")["args"].__setitem__(0, 1.5), "argument 'input'"),
        (lambda p: node(p, "aten.permute.default")["args"].__setitem__(1, ["list", [0, ["str", "x"], 1, 3]]), "dims"),
        (lambda p: node(p, "aten.cat.default")["args"][0][1].__setitem__(0, 2), "argument 'tensors'"),
        (lambda p: node(p, "aten.full.default")["kwargs"].__setitem__("dtype", ["str", "bool"]), "argument 'dtype'"),
        (lambda p: node(p, "_operator.add")["args"].__setitem__(0, ["ref", "attention_mask"]), "argument 'a'"),
        (lambda p: gen._graph(p, "prefill")["outputs"][0].__setitem__("value", None), "a graph output is a tensor"),
        (lambda p: node(p, "aten.full.default")["kwargs"].__setitem__("pin_memory", True), "pin_memory=True"),
    ]
    for edit, fragment in cases:
        expect(tmp_path, m.GraphSignatureError, edit, fragment)


def test_GraphShapeError(tmp_path):
    def view_size(p: Any, size: Any) -> None:
        node(p, "aten.view.default", "prefill")["args"][1][1][-1] = size

    cases = [
        (lambda p: node(p, "aten.sym_size.int")["args"].__setitem__(1, 7), "dim 7 out of range"),
        (lambda p: view_size(p, 7), "does not fit a tensor"),
        (lambda p: view_size(p, -2), "at most one -1"),
        (lambda p: node(p, "aten.full.default")["args"].__setitem__(0, ["list", [16384, 16384]]), "limit"),
        (lambda p: node(p, "aten.arange.start_step")["args"].__setitem__(1, 2**40), "limit"),
        (lambda p: node(p, "aten.arange.start_step")["args"].__setitem__(1, -5), "bounds disagree"),
        (lambda p: node(p, "aten.expand.default")["args"][1][1].__setitem__(1, 2**40), "limit"),
        (lambda p: node(p, "aten.expand.default")["args"][1][1].__setitem__(3, 3), "cannot expand"),
        (lambda p: node(p, "aten.where.self")["args"].__setitem__(0, ["ref", "full_1"]), "condition is bool"),
        (lambda p: node(p, "aten.linear.default")["args"].__setitem__(0, ["ref", "attention_mask"]), "linear"),
        (lambda p: node(p, "aten.index.Tensor")["args"][1][1].__setitem__(0, ["ref", "full"]), "int64 or int32"),
        (lambda p: node(p, "aten.embedding.default")["args"].__setitem__(0, ["ref", "attention_mask"]), "floating"),
        (lambda p: node(p, "_operator.floordiv", "prefill")["args"].__setitem__(1, 0)
         if any(n["op"] == "_operator.floordiv" for n in gen._graph(p, "prefill")["nodes"])
         else node(p, "aten.sym_size.int")["args"].__setitem__(1, 9), "out of range"),
    ]
    for edit, fragment in cases:
        expect(tmp_path, m.GraphShapeError, edit, fragment)


def test_index_values_are_checked(tmp_path):
    """Positions built from sizes are evaluated: one past the end of the mask is refused."""
    shifted = lambda p: next(n for n in gen._graph(p, "decode")["nodes"]  # noqa: E731
                             if n["op"] == "aten.add.Tensor" and n["args"][1] == 0)["args"].__setitem__(1, 1)
    expect(tmp_path, m.GraphShapeError, shifted, "index of dim 1: index values in [1, ")
    def token_ids_minus_one(p: Any) -> None:  # the check's token ids are zeros
        sub = node(p, "aten.sub.Tensor")
        sub["args"][0] = ["ref", "input_ids"]
        node(p, "aten.embedding.default")["args"][1] = ["ref", sub["name"]]

    expect(tmp_path, m.GraphShapeError, token_ids_minus_one, "embedding: index values in [-1, -1]")


def test_EntryConventionError(tmp_path):
    def swap(p: Any) -> None:
        eps = p.sections["manifest"]["entry_points"]
        eps["prefill"], eps["decode"] = eps["decode"], eps["prefill"]

    def drop_present(p: Any) -> None:
        g = gen._graph(p, "decode")
        g["outputs"] = g["outputs"][:-1]
        p.sections["manifest"]["entry_points"]["decode"]["outputs"].pop()

    cases = [
        (swap, "prefill takes input_ids, attention_mask"),
        (drop_present, "one present per past input"),
        (lambda p: p.sections["manifest"]["entry_points"]["decode"]["outputs"][0].__setitem__("dtype", "int64"),
         "the entry point says int64"),
        (lambda p: gen._graph(p, "prefill")["outputs"].reverse() or
         p.sections["manifest"]["entry_points"]["prefill"]["outputs"].reverse(), "returns logits"),
    ]
    for edit, fragment in cases:
        expect(tmp_path, m.EntryConventionError, edit, fragment)


def test_signatures_are_pytorchs():
    """The aten lines of the signature table bind like PyTorch's own schemas (names, order,
    keyword-only parameters and defaults)."""
    torch = pytest.importorskip("torch")
    for op, params in signatures.SIGNATURES.items():
        if not op.startswith("aten."):
            continue
        _, name, overload = op.split(".")
        schema = getattr(getattr(torch.ops.aten, name), overload)._schema
        assert [p.name for p in params] == [a.name for a in schema.arguments], op
        assert [p.keyword_only for p in params] == [a.kwarg_only for a in schema.arguments], op
        for p, a in zip(params, schema.arguments):
            assert p.required == (not a.has_default_value()), (op, p.name)


def _torch_run(graph: dict[str, Any], bundle: Any, inputs: dict[str, Any], qnodes: dict[str, Any]) -> dict[str, Any]:
    """Each node run eagerly through the runtime's op table, float weights standing in for
    quantized ones: the shapes and dtypes PyTorch computes."""
    torch = pytest.importorskip("torch")
    from runtime.ops import DTYPES, LAYOUTS, MEMORY_FORMATS, OPS

    env = dict(inputs)
    rng = torch.Generator().manual_seed(0)

    def tensor(name: str) -> Any:
        return torch.from_numpy(np.array(bundle.tensor(name)))

    def value(v: Any) -> Any:
        if not isinstance(v, list):
            return v
        tag, payload = v
        return {"ref": lambda: env[payload], "tensor": lambda: tensor(payload),
                "list": lambda: [value(x) for x in payload], "dtype": lambda: DTYPES[payload],
                "device": lambda: torch.device(payload), "layout": lambda: LAYOUTS[payload],
                "memory_format": lambda: MEMORY_FORMATS[payload], "str": lambda: payload}[tag]()

    for n in graph["nodes"]:
        args = [value(a) for a in n["args"]]
        entry = qnodes.get(n.get("qkey"))
        if entry and entry.get("weight"):
            i = WEIGHT_ARG[entry["kind"]]
            shape = graph_types._logical_shape(entry["weight"], tuple(args[i].shape))
            args[i] = torch.randn(shape, generator=rng)
        env[n["name"]] = OPS[n["op"]](*args, **{k: value(v) for k, v in n["kwargs"].items()})
    return env


@pytest.mark.parametrize("path", sorted(VALID.glob("*.mcq")), ids=lambda p: p.stem)
def test_the_checks_shapes_are_the_ones_pytorch_computes(path):
    torch = pytest.importorskip("torch")
    from runtime.ops import DTYPE_NAMES

    b = read(path)
    qnodes = (b.sections.get("qformat") or {}).get("nodes") or {}
    view = graph_types.TensorView(lambda n: _spec(b, n), b.tensor)
    for name in sorted(s for s in b.sections if s.startswith("graph/")):
        graph = b.sections[name]
        checker = graph_types._Checker(name, graph, view, qnodes, 2**40, 0)
        checker.run()
        inputs = {}
        for spec in graph["inputs"]:
            t = checker.env[spec["name"]]
            inputs[spec["name"]] = torch.from_numpy(t.value.copy()) if t.value is not None else \
                torch.randn(t.shape).to(getattr(torch, t.dtype))
        env = _torch_run(graph, b, inputs, qnodes)
        compared = 0
        for n in graph["nodes"]:
            got, want = checker.env[n["name"]], env[n["name"]]
            many = isinstance(want, (list, tuple))
            for g, w in zip(got if many else [got], want if many else [want]):
                if isinstance(w, torch.Tensor):
                    assert (g.dtype, g.shape) == (DTYPE_NAMES[w.dtype], tuple(w.shape)), (name, n["name"])
                    if g.value is not None:
                        assert np.array_equal(g.value, w.numpy()), (name, n["name"])
                    compared += 1
                else:
                    assert g == w, (name, n["name"])
        assert compared > 0.8 * len(graph["nodes"]), name


def _spec(b: Any, name: str) -> tuple[str, tuple[int, ...]]:
    info = b.tensor_info(name)
    return info.dtype, tuple(info.shape)

