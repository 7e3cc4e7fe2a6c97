"""One test per container-level error class: crafted files, exact type and code."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from mcqfmt_helpers import build, meta_ok, raw_file

import mcq_format as m
from mcq_format import constants as C
from mcq_format.container import open_container, parse_header, write_container

U8 = {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}


def expect(cls: type[m.McqFormatError], path, code: str, *, fragment: str = "") -> m.McqFormatError:
    with pytest.raises(cls) as info:
        m.read(path)
    assert type(info.value) is cls
    assert info.value.code == code
    assert str(info.value).startswith(f"[{code}] ")
    assert fragment in info.value.message
    return info.value


def test_FileUnreadableError(tmp_path):
    expect(m.FileUnreadableError, tmp_path / "missing.mcq", "E100_FILE_UNREADABLE")
    expect(m.FileUnreadableError, tmp_path, "E100_FILE_UNREADABLE")


def test_FileTooShortError(tmp_path):
    p = tmp_path / "short.mcq"
    p.write_bytes(b"\x01\x02\x03")
    expect(m.FileTooShortError, p, "E101_FILE_TOO_SHORT")
    p.write_bytes(b"")
    expect(m.FileTooShortError, p, "E101_FILE_TOO_SHORT")


def test_HeaderTooLargeError(tmp_path):
    p = tmp_path / "huge.mcq"
    for n in (C.MAX_HEADER_BYTES + 1, 2**63, 2**64 - 1):
        p.write_bytes(struct.pack("<Q", n) + b"{}")
        tracemalloc.start()
        try:
            expect(m.HeaderTooLargeError, p, "E102_HEADER_TOO_LARGE")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20  # rejected without allocating the claimed size


def test_HeaderLengthError(tmp_path):
    p = tmp_path / "h.mcq"
    for n in (0, 1):
        raw_file(p, b"{}", length=n)
        expect(m.HeaderLengthError, p, "E103_HEADER_LENGTH")


def test_TruncatedFileError(tmp_path):
    p = tmp_path / "t.mcq"
    raw_file(p, b"{}", length=100)  # header says 100 bytes, file has 2
    expect(m.TruncatedFileError, p, "E104_TRUNCATED")
    raw_file(p, {"__metadata__": meta_ok(), "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"ab")
    expect(m.TruncatedFileError, p, "E104_TRUNCATED")
    # A valid file cut short.
    build(p)
    data = p.read_bytes()
    p.write_bytes(data[:-1])
    expect(m.TruncatedFileError, p, "E104_TRUNCATED")


def test_HeaderEncodingError(tmp_path):
    p = tmp_path / "e.mcq"
    raw_file(p, b'{"\xff\xfe":1}')
    expect(m.HeaderEncodingError, p, "E110_HEADER_ENCODING")


@pytest.mark.parametrize(
    "text",
    [b'{"a":', b'{"a":NaN}', b'{"a":Infinity}', b"{" + b'"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}", b"{}x"],
    ids=["cut", "nan", "inf", "deep", "trailing"],
)
def test_HeaderJSONError(tmp_path, text):
    p = tmp_path / "j.mcq"
    raw_file(p, text)
    expect(m.HeaderJSONError, p, "E111_HEADER_JSON")


def test_DuplicateKeyError(tmp_path):
    p = tmp_path / "d.mcq"
    meta = '{"format":"mcq","mcq.format_version":"1.0","mcq.opset_version":"1"}'
    entry = '{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    raw_file(p, f'{{"__metadata__":{meta},"a":{entry},"a":{entry}}}'.encode(), b"x")
    err = expect(m.DuplicateKeyError, p, "E112_DUPLICATE_KEY")
    assert "'a'" in err.message
    raw_file(p, f'{{"__metadata__":{meta[:-1]},"format":"x"}},"a":{entry}}}'.encode(), b"x")
    expect(m.DuplicateKeyError, p, "E112_DUPLICATE_KEY", fragment="format")


def test_HeaderNotObjectError(tmp_path):
    p = tmp_path / "o.mcq"
    for text in (b"[]", b'"{}"', b" {}", b"12"):
        raw_file(p, text)
        expect(m.HeaderNotObjectError, p, "E113_HEADER_NOT_OBJECT")


def test_TensorEntryError(tmp_path):
    p = tmp_path / "te.mcq"
    raw_file(p, {"__metadata__": meta_ok(), "a": [1, 2]}, b"ab")
    expect(m.TensorEntryError, p, "E114_TENSOR_ENTRY", fragment="'a'")
    raw_file(p, {"__metadata__": meta_ok(), "a": dict(U8, extra=1)}, b"ab")
    expect(m.TensorEntryError, p, "E114_TENSOR_ENTRY", fragment="'a'")
    raw_file(p, {"__metadata__": meta_ok(), "a": {"dtype": "U8", "shape": [2]}}, b"ab")
    expect(m.TensorEntryError, p, "E114_TENSOR_ENTRY")


def test_TensorNameError(tmp_path):
    p = tmp_path / "n.mcq"
    raw_file(p, {"__metadata__": meta_ok(), "": U8}, b"ab")
    expect(m.TensorNameError, p, "E115_TENSOR_NAME")
    raw_file(p, b'{"__metadata__":{},"\\ud800":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"ab")
    expect(m.TensorNameError, p, "E115_TENSOR_NAME")
    for bad in ("", "__mcq__/manifest", "__metadata__"):
        with pytest.raises(m.TensorNameError) as info:
            m.write(p, {bad: np.zeros(1, np.uint8)}, {})
        assert info.value.code == "E115_TENSOR_NAME"


def test_MetadataError(tmp_path):
    p = tmp_path / "md.mcq"
    raw_file(p, {"a": U8}, b"ab")
    expect(m.MetadataError, p, "E120_METADATA", fragment="__metadata__")
    raw_file(p, {"__metadata__": {"format": 1}, "a": U8}, b"ab")
    expect(m.MetadataError, p, "E120_METADATA", fragment="format")
    raw_file(p, {"__metadata__": ["x"], "a": U8}, b"ab")
    expect(m.MetadataError, p, "E120_METADATA")
    build(p, meta={"mcq.opset_version": None})
    expect(m.MetadataError, p, "E120_METADATA", fragment="mcq.opset_version")
    for reserved in ("format", "mcq.sha256.manifest", "mcq.anything"):
        with pytest.raises(m.MetadataError):
            m.write(p, {}, {}, metadata={reserved: "x"})
    with pytest.raises(m.MetadataError):
        m.write(p, {}, {}, metadata={"k": 1})  # type: ignore[dict-item]


def test_NotMcqError(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"a": np.zeros(3, np.float32)}, str(p), metadata={"format": "pt"})
    expect(m.NotMcqError, p, "E121_NOT_MCQ", fragment="not an mcq file")
    save_file({"a": np.zeros(3, np.float32)}, str(p), metadata={})
    expect(m.NotMcqError, p, "E121_NOT_MCQ")


@pytest.mark.parametrize("version", ["1", "1.x", "01.0", "1.0.0", " 1.0", "1.-1", "", "１.0"])
def test_VersionStringError(tmp_path, version):
    p = tmp_path / "v.mcq"
    build(p, meta={"mcq.format_version": version})
    expect(m.VersionStringError, p, "E122_VERSION_STRING")


def test_VersionStringError_opset(tmp_path):
    p = tmp_path / "v.mcq"
    build(p, meta={"mcq.opset_version": "one"})
    expect(m.VersionStringError, p, "E122_VERSION_STRING", fragment="mcq.opset_version")


def test_UnsupportedVersionError(tmp_path):
    p = tmp_path / "u.mcq"
    for version in ("2.0", "0.9", "99.0"):
        build(p, meta={"mcq.format_version": version})
        expect(m.UnsupportedVersionError, p, "E123_UNSUPPORTED_VERSION")
    build(p, meta={"mcq.opset_version": "2"})
    expect(m.UnsupportedVersionError, p, "E123_UNSUPPORTED_VERSION", fragment="opset")


def test_UnknownDtypeError(tmp_path):
    p = tmp_path / "dt.mcq"
    for dtype in ("F64", "C64", "u8", 7, None):
        raw_file(p, {"__metadata__": meta_ok(), "a": dict(U8, dtype=dtype)}, b"ab")
        expect(m.UnknownDtypeError, p, "E130_UNKNOWN_DTYPE", fragment="'a'")
    with pytest.raises(m.UnknownDtypeError):
        m.write(p, {"f64": np.zeros(2, np.float64)}, {})
    with pytest.raises(m.UnknownDtypeError):
        m.write(p, {"raw": ("F64", (1,), b"\0" * 8)}, {})


@pytest.mark.parametrize(
    "shape", [[-1], [1.5], [True], ["2"], "2", [2**40, 2**40, 2**40], [1] * 33, [2**64]]
)
def test_ShapeError(tmp_path, shape):
    p = tmp_path / "s.mcq"
    raw_file(p, {"__metadata__": meta_ok(), "a": dict(U8, shape=shape)}, b"ab")
    expect(m.ShapeError, p, "E131_BAD_SHAPE", fragment="'a'")


def _two(a: list, b: list, data: bytes) -> tuple[dict, bytes]:
    return {
        "__metadata__": meta_ok(),
        "a": {"dtype": "U8", "shape": [a[1] - a[0]], "data_offsets": a},
        "b": {"dtype": "U8", "shape": [max(b[1] - b[0], 0)], "data_offsets": b},
    }, data


@pytest.mark.parametrize(
    "header,data",
    [
        _two([0, 2], [2, 4], b"abcdef"),  # trailing bytes
        _two([0, 2], [3, 5], b"abcde"),  # hole
        _two([0, 3], [2, 5], b"abcde"),  # overlap
        _two([0, 2], [4, 2], b"abcd"),  # begin > end
        ({"__metadata__": meta_ok(), "a": dict(U8, data_offsets=[0, 3])}, b"abc"),  # size mismatch
        ({"__metadata__": meta_ok(), "a": dict(U8, data_offsets=[0])}, b"ab"),
        ({"__metadata__": meta_ok(), "a": dict(U8, data_offsets=[0.0, 2])}, b"ab"),
        ({"__metadata__": meta_ok(), "a": dict(U8, data_offsets=[-2, 0])}, b"ab"),
        ({"__metadata__": meta_ok(), "a": dict(U8, data_offsets=[2**64, 2**64 + 2])}, b"ab"),
    ],
    ids=["trailing", "hole", "overlap", "reversed", "size", "arity", "float", "negative", "u64"],
)
def test_OffsetsError(tmp_path, header, data):
    p = tmp_path / "off.mcq"
    raw_file(p, header, data)
    expect(m.OffsetsError, p, "E132_BAD_OFFSETS")


def test_TensorNotFoundError(tmp_path):
    p = tmp_path / "nf.mcq"
    build(p)
    with m.read(p) as bundle:
        for name in ("nope", "__mcq__/manifest"):
            with pytest.raises(m.TensorNotFoundError) as info:
                bundle.tensor(name)
            assert info.value.code == "E133_TENSOR_NOT_FOUND"
            assert isinstance(info.value, KeyError)
            assert repr(name) in str(info.value)
        with pytest.raises(m.TensorNotFoundError):
            bundle.tensor_info("nope")
    with open_container(p) as c, pytest.raises(m.TensorNotFoundError):
        c.tensor("nope")


def test_TensorDataError(tmp_path):
    p = tmp_path / "td.mcq"
    for value in ([1, 2, 3], "abc", ("U8", (3,), b"ab"), ("U8", (1,), 12)):
        with pytest.raises(m.TensorDataError) as info:
            write_container(p, {"a": value}, meta_ok())
        assert info.value.code == "E134_TENSOR_DATA"
    assert not p.exists()


def test_parse_header_touches_no_tensor_data(tmp_path):
    p = tmp_path / "lazy.mcq"
    build(p)
    header = parse_header(p)
    assert header.data_start % C.DATA_ALIGNMENT == 0
    assert set(header.tensors) >= {"embed.weight", "__mcq__/manifest"}
