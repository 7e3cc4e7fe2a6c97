"""One test per section / graph error class: crafted bundles, exact type and code."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from mcqfmt_helpers import build, edit, model_tensors, sections, with_section

import mcq_format as m
from mcq_format.container import open_container, write_container


def expect(cls: type[m.McqFormatError], path, code: str, fragment: str = "") -> m.McqFormatError:
    with pytest.raises(cls) as info:
        m.validate(path, verify=True)
    assert type(info.value) is cls, info.value
    assert info.value.code == code
    assert fragment in info.value.message, info.value.message
    return info.value


def drop(name: str) -> dict:
    secs = sections()
    del secs[name]
    return secs


def _set_arg(node: int, i: int, value):
    return lambda g: g["nodes"][node]["args"].__setitem__(i, value)


def _set_kwarg(node: int, key: str, value):
    return lambda g: g["nodes"][node]["kwargs"].__setitem__(key, value)


def _set(node: int, key: str, value):
    return lambda g: g["nodes"][node].__setitem__(key, value)


def test_MissingSectionError(tmp_path):
    p = tmp_path / "ms.mcq"
    build(p, sections_=drop("manifest"))
    expect(m.MissingSectionError, p, "E200_SECTION_MISSING", "'manifest'")
    build(p, sections_=drop("graph/decode"))
    expect(m.MissingSectionError, p, "E200_SECTION_MISSING", "graph/decode")
    build(p, meta={"mcq.sha256.ghost": "0" * 64})
    expect(m.MissingSectionError, p, "E200_SECTION_MISSING", "mcq.sha256.ghost")
    build(p, digests=False)
    m.validate(p)  # tensor_sha256 is optional for reading...
    expect(m.MissingSectionError, p, "E200_SECTION_MISSING", "tensor_sha256")  # ...but verify needs it


def test_SectionLayoutError(tmp_path):
    p = tmp_path / "sl.mcq"
    build(p, tensors={**model_tensors(), "__mcq__/extra": np.zeros(4, np.float32)}, meta={"mcq.sha256.extra": "0" * 64})
    expect(m.SectionLayoutError, p, "E201_SECTION_LAYOUT", "'extra'")
    build(p, tensors={**model_tensors(), "__mcq__/extra": np.zeros((2, 2), np.uint8)})
    expect(m.SectionLayoutError, p, "E201_SECTION_LAYOUT", "'extra'")
    for bad in ("Manifest", "graph/", "graph/a/b", "1x", ""):
        build(p, tensors={**model_tensors(), "__mcq__/" + bad: np.zeros(2, np.uint8)})
        expect(m.SectionLayoutError, p, "E201_SECTION_LAYOUT")
        with pytest.raises(m.SectionLayoutError):
            m.write(p, {}, {**sections(), bad: {}})
    with pytest.raises(m.SectionLayoutError, match="tensor_sha256"):
        m.write(p, {}, {**sections(), "tensor_sha256": {}})


def test_SectionHashError(tmp_path):
    p = tmp_path / "sh.mcq"
    build(p)
    with open_container(p) as c:
        info = c.header.tensors["__mcq__/manifest"]
        at = c.header.data_start + info.begin + 3
    data = bytearray(p.read_bytes())
    data[at] ^= 0x01
    p.write_bytes(bytes(data))
    expect(m.SectionHashError, p, "E202_SECTION_HASH", "'manifest'")
    build(p, meta={"mcq.sha256.qformat": None})
    expect(m.SectionHashError, p, "E202_SECTION_HASH", "'qformat'")
    build(p)
    digest = m.read(p).metadata["mcq.sha256.qformat"]
    build(p, meta={"mcq.sha256.qformat": digest.upper()})
    expect(m.SectionHashError, p, "E202_SECTION_HASH", "'qformat'")


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never-used byte
        b"\x80\xc0",  # extra data after a map
        b"",  # empty
        b"\xa2\xff\xfe",  # invalid UTF-8 string
        b"\x81\xc4\x01k\x01",  # bytes map key
        b"\x81\x01\x02",  # int map key
        msgpack.packb(msgpack.ExtType(5, b"x")),
        msgpack.packb(msgpack.Timestamp(1, 0)),
        b"\x81\xa1k\xdc\x00\x05",  # list claims 5 items, has none
    ],
    ids=["c1", "extra", "empty", "utf8", "binkey", "intkey", "ext", "timestamp", "short"],
)
def test_SectionDecodeError(tmp_path, payload):
    p = tmp_path / "sd.mcq"
    build(p, sections_=with_section("tokenizer", payload))
    expect(m.SectionDecodeError, p, "E203_SECTION_MSGPACK", "'tokenizer'")


def test_MsgpackLimitError(tmp_path):
    p = tmp_path / "ml.mcq"
    build(p, sections_=with_section("extra", msgpack.packb(_deep(65))))
    expect(m.MsgpackLimitError, p, "E204_MSGPACK_LIMIT", "'extra'")
    build(p, sections_=with_section("extra", b"\xdd\xff\xff\xff\xff"))  # array32 of 4G items
    expect(m.MsgpackLimitError, p, "E204_MSGPACK_LIMIT", "'extra'")
    # 3M empty arrays (3 MB, each array within its limits): over the file's container budget,
    # refused while decoding, before they cost their ~200 MB as Python objects
    n = 3 * 2**20
    build(p, sections_=with_section("extra", b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n))
    expect(m.MsgpackLimitError, p, "E204_MSGPACK_LIMIT", "2097152 maps and arrays")


@pytest.mark.parametrize(
    "section,fn,fragment",
    [
        ("graph/decode", _set_arg(2, 0, "raw"), "nodes[2].args[0]: expected a scalar"),
        ("graph/decode", _set_arg(2, 0, ["x", 1]), "nodes[2].args[0][0]: unknown tag 'x'"),
        ("graph/decode", _set_arg(2, 0, {"a": 1}), "nodes[2].args[0]"),
        ("graph/decode", _set_arg(2, 0, [["ref"], "x"]), "nodes[2].args[0]"),
        ("graph/decode", _set_kwarg(1, "dtype", ["dtype", "float99"]), "kwargs.dtype[1]: unknown dtype"),
        ("graph/decode", _set_kwarg(1, "layout", ["layout", "sparse"]), "unknown layout"),
        ("graph/decode", lambda g: g["nodes"][4]["args"][1][1][1].append(3), "nodes[4].args[1][1][1]"),
        ("graph/decode", lambda g: g.__setitem__("version", 2), "version: expected 1"),
        ("graph/decode", lambda g: g.__setitem__("version", True), "version: expected 1"),
        ("graph/decode", lambda g: g.__delitem__("outputs"), "missing field 'outputs'"),
        ("graph/decode", lambda g: g["inputs"][0].__setitem__("shape", [-1]), "inputs[0].shape[0]"),
        ("graph/decode", lambda g: g["nodes"][0].__setitem__("kwargs", []), "nodes[0].kwargs: expected a map"),
        ("graph/decode", lambda g: g["nodes"][0].__setitem__("meta", 3), "nodes[0].meta"),
        ("manifest", lambda x: x.__setitem__("format", "gguf"), "manifest: format: expected 'mcq'"),
        ("manifest", lambda x: x.__setitem__("format_version", [1, 1]), "format_version"),
        ("manifest", lambda x: x.__setitem__("opset_version", 2), "opset_version"),
        ("manifest", lambda x: x["producer"].__delitem__("version"), "producer: missing field 'version'"),
        ("manifest", lambda x: x["model"].__setitem__("config", None), "model.config: expected a map, got nil"),
        ("manifest", lambda x: x.__setitem__("tokenizer", "x"), "manifest: tokenizer"),
        ("manifest", lambda x: x["entry_points"]["decode"].update(graph="manifest"), "entry_points.decode.graph"),
        ("qformat", lambda q: q.__setitem__("nodes", []), "qformat: nodes: expected a map"),
        ("qformat", lambda q: q["nodes"]["lm_head"].__delitem__("kind"), "nodes.lm_head: missing field 'kind'"),
        ("qformat", lambda q: q["nodes"]["lm_head"]["weight"].__setitem__("scale", [1]), "nodes.lm_head.weight.scale"),
        ("tokenizer", lambda t: t.__setitem__("json", b"{}"), "tokenizer: json: expected a str, got bytes"),
        ("tokenizer", lambda t: t.update(kind="hf-tokenizers-json-zlib", zlib="{}"), "tokenizer: zlib: expected bin"),
        ("tokenizer", lambda t: t.update(kind="hf-tokenizers-json-zlib", zlib=b"not zlib"),
         "tokenizer: zlib: not valid zlib data"),
        ("tokenizer", lambda t: t.update(kind="hf-tokenizers-json-zlib", zlib=__import__("zlib").compress(b"{}")[:-3]),
         "tokenizer: zlib: decompresses to more than"),
        ("tokenizer", lambda t: t.update(kind="hf-tokenizers-json-zlib", zlib=__import__("zlib").compress(b"\xff{}")),
         "tokenizer: zlib: decompressed tokenizer document is not UTF-8"),
        ("tensor_sha256", lambda d: d.__setitem__("embed.weight", b"short"), "tensor_sha256: embed.weight"),
        ("tensor_sha256", lambda d: d.__delitem__("embed.weight"), "no digest for tensors ['embed.weight']"),
    ],
)
def test_SectionSchemaError(tmp_path, section, fn, fragment):
    p = tmp_path / "ss.mcq"
    if section == "tensor_sha256":
        build(p)
        secs = dict(m.read(p).sections)
        fn(secs[section])
    else:
        secs = edit(section, fn)
    build(p, sections_=secs)
    err = expect(m.SectionSchemaError, p, "E205_SECTION_SCHEMA", fragment)
    assert err.message.startswith(section + ":")


def test_SectionSchemaError_names_full_path(tmp_path):
    p = tmp_path / "path.mcq"
    build(p, sections_=edit("graph/decode", _set_arg(2, 0, ["x", 1])))
    err = expect(m.SectionSchemaError, p, "E205_SECTION_SCHEMA")
    assert err.message == "graph/decode: nodes[2].args[0][0]: unknown tag 'x'"


def _deep(levels: int) -> list:
    obj: list = []
    for _ in range(levels):
        obj = [obj]
    return obj


@pytest.mark.parametrize(
    "obj",
    [{1, 2}, {"k": object()}, {1: "x"}, 2**70, -(2**64), _deep(70)],
    ids=["set", "object", "intkey", "bigint", "negbigint", "deep"],
)
def test_SectionEncodeError(tmp_path, obj):
    p = tmp_path / "se.mcq"
    with pytest.raises(m.SectionEncodeError) as info:
        m.write(p, {}, {**sections(), "extra": obj})
    assert info.value.code == "E206_SECTION_ENCODE"
    assert "extra" in info.value.message
    assert not p.exists()


def test_TensorHashError(tmp_path):
    p = tmp_path / "th.mcq"
    build(p)
    with open_container(p) as c:
        info = c.header.tensors["embed.weight"]
        at = c.header.data_start + info.begin
    data = bytearray(p.read_bytes())
    data[at] ^= 0x80
    p.write_bytes(bytes(data))
    m.validate(p)  # without verify, tensor data is not read
    expect(m.TensorHashError, p, "E210_TENSOR_HASH", "'embed.weight'")


@pytest.mark.parametrize("op", ["builtins.eval", "os.system", "aten.linear", "", 3, None, "posix.system"])
def test_OpNotAllowedError(tmp_path, op):
    p = tmp_path / "op.mcq"
    build(p, sections_=edit("graph/decode", _set(1, "op", op)))
    err = expect(m.OpNotAllowedError, p, "E300_OP_NOT_ALLOWED", "'cast'")
    assert repr(op) in err.message and err.message.startswith("graph/decode: nodes[1].op")


def expect_edit(tmp_path, section: str, fn, cls: type[m.McqFormatError], fragment: str = "") -> m.McqFormatError:
    """Build a bundle with ``fn`` applied to ``section`` and expect ``cls``."""
    p = tmp_path / "edited.mcq"
    build(p, sections_=edit(section, fn))
    return expect(cls, p, cls.code, fragment)


@pytest.mark.parametrize(
    "fn,fragment",
    [
        (_set_arg(1, 0, ["ref", "ghost"]), "nodes[1].args[0][1]: reference to undefined value 'ghost'"),
        (lambda g: g["outputs"][0].__setitem__("value", ["ref", "ghost"]), "outputs[0].value[1]"),
        (lambda g: g["nodes"][4]["args"][1][1].append(["ref", "ghost"]), "nodes[4].args[1][1][3][1]"),
    ],
)
def test_GraphReferenceError(tmp_path, fn, fragment):
    expect_edit(tmp_path, "graph/decode", fn, m.GraphReferenceError, fragment)


def test_qkey_need_not_be_in_qformat(tmp_path):
    # A qkey names a quant point; only the quantized ones appear in qformat.
    p = tmp_path / "qk.mcq"
    build(p, sections_=edit("graph/decode", _set(1, "qkey", "not_quantized")))
    m.validate(p, verify=True)
    expect_edit(tmp_path, "graph/decode", _set(1, "qkey", 3), m.SectionSchemaError, "nodes[1].qkey")


@pytest.mark.parametrize(
    "section,fn,fragment",
    [
        ("graph/decode", _set_arg(0, 0, ["tensor", "ghost"]), "nodes[0].args[0][1]: no tensor 'ghost'"),
        ("graph/decode", _set_arg(0, 0, ["tensor", "__mcq__/manifest"]), "'__mcq__/manifest'"),
        (
            "qformat",
            lambda q: q["nodes"]["lm_head"]["weight"].__setitem__("zero_point", "ghost"),
            "nodes.lm_head.weight.zero_point",
        ),
    ],
)
def test_TensorReferenceError(tmp_path, section, fn, fragment):
    expect_edit(tmp_path, section, fn, m.TensorReferenceError, fragment)


def test_TensorReferenceError_in_tensor_sha256(tmp_path):
    p = tmp_path / "tr.mcq"
    build(p)
    secs = dict(m.read(p).sections)
    secs["tensor_sha256"]["ghost"] = b"\0" * 32
    build(p, sections_=secs)
    expect(m.TensorReferenceError, p, "E302_TENSOR_REFERENCE", "'ghost'")


@pytest.mark.parametrize(
    "fn,fragment",
    [
        (_set_arg(0, 1, ["ref", "head"]), "'head' before its definition"),
        (_set_arg(1, 0, ["ref", "cast"]), "'cast' before its definition"),  # self reference: a cycle
    ],
)
def test_GraphOrderError(tmp_path, fn, fragment):
    expect_edit(tmp_path, "graph/decode", fn, m.GraphOrderError, fragment)


@pytest.mark.parametrize(
    "fn,fragment",
    [
        (_set(1, "name", "emb"), "nodes[1].name: duplicate name 'emb'"),
        (_set(1, "name", "input_ids"), "nodes[1].name: duplicate name 'input_ids'"),
        (lambda g: g["inputs"][1].__setitem__("name", "input_ids"), "inputs[1]: duplicate name 'input_ids'"),
        (lambda g: g["outputs"].append(dict(g["outputs"][0])), "outputs[1].name"),
    ],
)
def test_DuplicateNameError(tmp_path, fn, fragment):
    expect_edit(tmp_path, "graph/decode", fn, m.DuplicateNameError, fragment)


def test_EntryPointError(tmp_path):
    err = expect_edit(
        tmp_path, "manifest", lambda x: x["entry_points"]["decode"]["inputs"].pop(), m.EntryPointError, "'decode'"
    )
    assert "missing ['attention_mask']" in err.message
    mask = {"name": "mask", "dtype": "bool", "shape": []}
    expect_edit(tmp_path, "graph/prefill", lambda g: g["inputs"].append(mask), m.EntryPointError, "'prefill'")


def test_write_refuses_what_read_rejects(tmp_path):
    p = tmp_path / "w.mcq"
    p.write_bytes(b"previous")
    with pytest.raises(m.OpNotAllowedError):
        m.write(p, model_tensors(), edit("graph/decode", lambda g: g["nodes"][0].__setitem__("op", "os.system")))
    with pytest.raises(m.MissingSectionError):
        m.write(p, model_tensors(), drop("manifest"))
    assert p.read_bytes() == b"previous"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.mcq"]


def test_errors_raised_by_write_container_are_format_errors(tmp_path):
    with pytest.raises(m.McqFormatError):
        write_container(tmp_path / "x.mcq", {"a": np.zeros(1, np.complex64)}, {})
