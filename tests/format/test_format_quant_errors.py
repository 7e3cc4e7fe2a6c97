"""One test per quantization-meaning error class (spec 5.5a): mutants of a valid conformance
bundle, hashes re-signed, each refused with its exact type and code. The committed invalid
conformance vectors cover one mutant per class too; these try the neighbours."""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import numpy as np
import pytest

import mcq_format as m
from mcqfmt_helpers import VALID, conformance_generate

gen = conformance_generate()

BASE = VALID / "llama-mini-w8a8kv8.mcq"
Q, K, KV = gen.Q_LINEAR, gen.K_LINEAR, gen.K_CACHE


@pytest.fixture(autouse=True)
def _original():
    gen.ORIGINAL = gen.Parts(BASE)  # Parts.build re-signs against it where asked


def mutant(tmp_path: pathlib.Path, edit: Callable[[Any], Any], base: pathlib.Path = BASE) -> pathlib.Path:
    p = gen.Parts(base)
    edit(p)
    path = tmp_path / "mutant.mcq"
    path.write_bytes(p.build())
    return path


def expect(cls: type[m.McqFormatError], path: pathlib.Path, fragment: str) -> None:
    with pytest.raises(cls) as info:
        m.validate(path)
    assert type(info.value) is cls, info.value
    assert fragment in info.value.message, info.value.message


def nodes(p: Any) -> dict[str, Any]:
    return p.sections["qformat"]["nodes"]


def test_valid_bundles_pass_the_semantic_checks():
    for path in sorted(VALID.glob("*.mcq")):
        m.validate(path)


def test_QuantSpecError(tmp_path):
    cases = [
        (lambda p: nodes(p)[Q].__setitem__("kind", "conv"), "kind 'conv'"),
        (lambda p: nodes(p)[Q].pop("inputs"), "inputs"),
        (lambda p: gen._spec(p, Q).__setitem__("scale", 0.5), "scale must name a tensor"),
        (lambda p: gen._spec(p, Q).__setitem__("scale", None), "scale must name a tensor"),
        (lambda p: gen._spec(p, Q).__setitem__("axis", 7), "axis 7"),
        (lambda p: gen._spec(p, Q).__setitem__("dtype", "int3"), "'int3'"),
        (lambda p: gen._spec(p, Q).__setitem__("nbits", 4), "nbits 4"),
        (lambda p: gen._spec(p, Q).__setitem__("symmetric", 1), "symmetric 1"),
        (lambda p: gen._spec(p, Q, "x").__setitem__("granularity", "channel"), "granularity 'channel'"),
        (lambda p: gen._spec(p, Q).__setitem__("granularity", "rotated_tensor"), "granularity 'rotated_tensor'"),
        (lambda p: gen._spec(p, Q).update(granularity="group", axis=1, group_size=0), "group_size 0"),
        (lambda p: gen._spec(p, Q).update(symmetric=False), "symmetric weights"),
        (lambda p: gen._spec(p, KV, "x").__setitem__("axis", 2), "per KV head"),
        (lambda p: nodes(p)[KV].__setitem__("weight", gen._spec(p, Q)), "no weight spec"),
        (lambda p: nodes(p)[Q]["inputs"].__setitem__("y", gen._spec(p, Q, "x")), "not ['y']"),
        (lambda p: gen._spec(p, "model.layers.0.self_attn/bmm0", "b").__setitem__("source", Q),
         "not a kv_cache quant point"),
        (lambda p: gen._spec(p, Q, "x").__setitem__("source", KV), "b operand of a bmm only"),
        (lambda p: gen._spec(p, Q, "x").__setitem__("rotation", [f"{Q}/x.smooth", f"{Q}/x.smooth"]),
         "rotated_tensor only"),
        (lambda p: nodes(p)["model.layers.0.self_attn/v_cache"]["inputs"].pop("x"), "quantizes its input x"),
        (lambda p: p.sections["manifest"]["quant"].__setitem__("qlevel", 0), "quant.qlevel 0"),
        (lambda p: gen._spec(p, "model.layers.0.self_attn/bmm0", "b").__setitem__("axis", 127), "per head along axis 0"),
    ]
    for edit, fragment in cases:
        expect(m.QuantSpecError, mutant(tmp_path, edit), fragment)


def test_QuantParamsError(tmp_path):
    def first(value):
        return lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, value, a)

    cases = [
        (lambda p: gen._values(p, f"{Q}/weight.scale", first(0.0)), "0.0"),
        (lambda p: gen._values(p, f"{Q}/weight.scale", first(-2.0)), "-2.0"),
        (lambda p: gen._values(p, f"{Q}/weight.scale", first(np.nan)), "nan"),
        (lambda p: gen._values(p, f"{KV}/x.scale", first(np.inf)), "inf"),
        (lambda p: gen._values(p, f"{Q}/x.zero_point", lambda a: a - 200), "outside [-128, 127]"),
        (lambda p: gen._values(p, f"{Q}/weight.zero_point", first(1)), "not 0 in a symmetric spec"),
        (lambda p: gen._values(p, f"{Q}/x.zero_point", lambda a: a, "F32"), "not I8 or I32"),
        (lambda p: gen._values(p, f"{Q}/weight.scale", lambda a: a, "F16"), "not F32"),
        (lambda p: gen._values(p, f"{Q}/x.scale", lambda a: a.reshape(1)), "implies []"),
        (lambda p: (gen._values(p, f"{Q}/weight.scale", lambda a: a[:-1]),
                    gen._values(p, f"{Q}/weight.zero_point", lambda a: a[:-1])), "its granularity implies"),
        (lambda p: gen._values(p, f"{Q}/weight.zero_point", lambda a: a[:-1]), "its scale"),
        (lambda p: gen._values(p, f"{Q}/x.smooth", first(0.0)), "smooth"),
        (lambda p: gen._values(p, f"{Q}/x.smooth", lambda a: a[:-1]), "smooth"),
        # Q.K^T's key operand repeats its KV cache's parameters (spec Q.5): a cache scale 1 % wider
        # than the copy the bmm reads would have the keys read with a scale they were not stored with
        (lambda p: gen._values(p, f"{KV}/x.scale", lambda a: a * np.float32(1.01)), "repeated for the query heads"),
        (lambda p: gen._values(p, "model.layers.0.self_attn/bmm0/b.zero_point", lambda a: a + 1),
         "repeated for the query heads"),
    ]
    for edit, fragment in cases:
        expect(m.QuantParamsError, mutant(tmp_path, edit), fragment)
    rotated = VALID / "gpt2-mini-w8a8kv8-rotated.mcq"
    factor = lambda p: next(n for n in sorted(p.tensors) if n.startswith("rotation.") and n.endswith(".b"))  # noqa: E731
    expect(m.QuantParamsError, mutant(tmp_path, lambda p: gen._values(p, factor(p), np.zeros_like), rotated),
           "not orthogonal")
    expect(m.QuantParamsError, mutant(tmp_path, lambda p: gen._values(p, factor(p), lambda a: 2 * a), rotated),
           "not orthogonal")


def test_QuantTensorError(tmp_path):
    expect(m.QuantTensorError, mutant(tmp_path, lambda p: gen._spec(p, Q).update(dtype="int4", nbits=4, shape=[64, 64])),
           "stored as I8; int4 is stored as U8")
    expect(m.QuantTensorError, mutant(tmp_path, lambda p: gen._values(p, f"{Q}/weight", lambda a: a, "U8")),
           "stored as U8")
    expect(m.QuantTensorError, mutant(tmp_path, lambda p: gen._values(p, f"{Q}/weight", lambda a: a.reshape(-1))),
           "a matrix is required")
    expect(m.QuantTensorError, mutant(tmp_path, lambda p: nodes(p)[Q].__setitem__("weight", None)),
           "without a weight spec")


def test_QuantNodeError(tmp_path):
    def linear_node(p):
        return next(n for n in gen._graph(p)["nodes"] if n.get("qkey") == Q)

    cases = [
        (lambda p: linear_node(p)["args"].__setitem__(1, ["tensor", f"{K}/weight"]), "reads weight"),
        (lambda p: linear_node(p)["args"].__setitem__(1, ["tensor", "model.embed_tokens.weight"]), "reads weight"),
        (lambda p: linear_node(p).__setitem__("qkey", "model.layers.0.self_attn/bmm0"), "a bmm quant point"),
        (lambda p: gen._kv_point(p)["args"].__setitem__(1, 2**40), "int layer"),
        (lambda p: gen._kv_point(p)["args"].__setitem__(1, 1), "int layer in [0, 1)"),
        (lambda p: gen._kv_point(p)["args"].__setitem__(1, ["str", "0"]), "int layer"),
        (lambda p: gen._kv_point(p)["args"].__setitem__(2, 2), "which 0 or 1"),
        (lambda p: gen._kv_point(p)["args"].__setitem__(2, True), "which 0 or 1"),
    ]
    for edit, fragment in cases:
        expect(m.QuantNodeError, mutant(tmp_path, edit), fragment)


def test_KvCacheError(tmp_path):
    kv = lambda p: p.sections["manifest"]["kv_cache"]  # noqa: E731
    cases = [
        (lambda p: kv(p).__setitem__("dtype", "int3"), "kv_cache.dtype"),
        (lambda p: kv(p).__setitem__("heads", 0), "kv_cache.heads"),
        (lambda p: kv(p).__setitem__("layers", "1"), "kv_cache.layers"),
        (lambda p: kv(p).__setitem__("head_dim", 2**64 - 1), "kv_cache.head_dim"),
        (lambda p: p.sections["manifest"].__setitem__("kv_cache", [1]), "expected a map"),
        (lambda p: kv(p).__setitem__("dtype", "float32"), "differs from manifest.kv_cache.dtype"),
    ]
    for edit, fragment in cases:
        expect(m.KvCacheError, mutant(tmp_path, edit), fragment)


def test_manifest_qlevel_and_token_ids_are_checked(tmp_path):
    man = lambda p: p.sections["manifest"]  # noqa: E731
    cases = [
        (lambda p: man(p)["quant"].__setitem__("qlevel", "four"), "quant.qlevel"),
        (lambda p: man(p)["quant"].__setitem__("qlevel", 7), "quant.qlevel"),
        (lambda p: man(p)["tokenizer"].__setitem__("eos_token_ids", ["2"]), "eos_token_ids[0]"),
        (lambda p: man(p)["tokenizer"].__setitem__("eos_token_ids", 2), "eos_token_ids"),
        (lambda p: man(p)["tokenizer"].__setitem__("pad_token_id", 2**64 - 1), "pad_token_id"),
        (lambda p: man(p)["tokenizer"].__setitem__("bos_token_id", -1), "bos_token_id"),
    ]
    for edit, fragment in cases:
        expect(m.SectionSchemaError, mutant(tmp_path, edit), fragment)


def test_a_bundle_has_an_entry_point(tmp_path):
    expect(m.EntryPointError, mutant(tmp_path, lambda p: p.sections["manifest"].__setitem__("entry_points", {})),
           "at least one entry point")
