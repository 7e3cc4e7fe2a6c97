"""Hostile inputs: nothing executes, bombs are rejected fast, only format errors escape."""

from __future__ import annotations

import os
import pickle
import struct
import time

import msgpack
import pytest
from mcqfmt_helpers import build, edit, raw_file, sections_without_tensors, with_section

import mcq_format as m


class _Evil:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_pickle_payload_is_rejected_and_never_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(sentinel)))
    p = tmp_path / "pickle.mcq"
    # As a whole section: not msgpack of a map -> rejected.
    build(p, sections_=with_section("tokenizer", payload))
    with pytest.raises(m.McqFormatError):
        m.validate(p, verify=True)
    # Inside a section as bytes: decoded as inert data, still bytes.
    build(p, sections_=with_section("extra", {"blob": payload}))
    with m.read(p) as bundle:
        assert bundle.sections["extra"]["blob"] == payload
    # As a tensor: raw bytes, never unpickled.
    build(p, tensors={"blob": ("U8", (len(payload),), payload)}, sections_=sections_without_tensors())
    m.validate(p, verify=True)
    with m.read(p) as bundle:
        assert bundle.tensor("blob").tobytes() == payload
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "op", ["builtins.eval", "builtins.exec", "os.system", "subprocess.Popen", "__import__", "pickle.loads"]
)
def test_dangerous_op_names_rejected(tmp_path, op):
    p = tmp_path / "op.mcq"
    build(p, sections_=edit("graph/prefill", lambda g: g["nodes"][0].__setitem__("op", op)))
    with pytest.raises(m.OpNotAllowedError):
        m.read(p)
    assert not m.is_allowed(op)


def test_opset_contents():
    assert m.is_allowed("aten.linear.default") and not m.is_allowed("mcq.qlinear")  # defined nowhere: not allowed
    assert not m.is_allowed(None) and not m.is_allowed("aten.linear.default", opset_version=99)
    assert all(name.split(".")[0] in {"aten", "_operator", "mcq"} for name in m.OPSET_V1)


def _fast(fn, seconds: float = 0.5) -> None:
    start = time.perf_counter()
    fn()
    assert time.perf_counter() - start < seconds


@pytest.mark.parametrize(
    "payload",
    [
        b"\x91" * 100_000 + b"\xc0",  # depth bomb
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G elements
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G entries
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\x81\xa1k" + b"\xdc\xff\xff" + b"\xc0" * 10,  # array16 claiming 65535 with 10 present
    ],
    ids=["depth", "array", "map", "str", "bin", "short-array"],
)
def test_msgpack_bombs_rejected_fast(tmp_path, payload):
    p = tmp_path / "bomb.mcq"
    build(p, sections_=with_section("extra", payload))

    def run() -> None:
        with pytest.raises((m.MsgpackLimitError, m.SectionDecodeError)):
            m.read(p)

    _fast(run)


def test_wide_msgpack_within_limits_is_fine():
    data = msgpack.packb([None] * 100_000)
    assert len(m.decode_section("wide", data)) == 100_000


def test_huge_header_length_rejected_fast(tmp_path):
    p = tmp_path / "h.mcq"
    p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _fast(lambda: pytest.raises(m.HeaderTooLargeError, m.read, p))


def test_json_depth_bomb_in_header(tmp_path):
    p = tmp_path / "j.mcq"
    raw_file(p, b'{"a":' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}")
    _fast(lambda: pytest.raises(m.HeaderJSONError, m.read, p), seconds=2.0)


def test_fifo_is_rejected_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.mcq"
    os.mkfifo(fifo)
    _fast(lambda: pytest.raises(m.FileUnreadableError, m.read, fifo))


def test_zlib_tokenizer_bomb_stops_at_the_limit(tmp_path):
    """A tokenizer section inflating past 64 MiB is rejected without inflating it all."""
    import zlib

    from mcq_format import constants as C

    bomb = zlib.compress(b" " * (C.TOKENIZER_MAX_JSON_BYTES + 1024), 9)
    assert len(bomb) < 200_000
    p = tmp_path / "bomb.mcq"
    build(p, sections_=with_section("tokenizer", {"kind": C.TOKENIZER_KIND_HF_ZLIB, "zlib": bomb}))
    with pytest.raises(m.SectionSchemaError, match="decompresses to more than"):
        m.validate(p)


def test_zlib_tokenizer_reads_back_the_document(tmp_path):
    import zlib

    from mcq_format.schema import tokenizer_json

    doc = '{"model": {"vocab": {"a": 0}}}'
    p = tmp_path / "z.mcq"
    build(p, sections_=with_section("tokenizer", {"kind": "hf-tokenizers-json-zlib", "zlib": zlib.compress(doc.encode())}))
    m.validate(p, verify=True)
    with m.read(p) as bundle:
        assert tokenizer_json(bundle.sections["tokenizer"]) == doc
