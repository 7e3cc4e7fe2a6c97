"""Random mutations of a valid file: reading either succeeds or raises a format error."""

from __future__ import annotations

import os
import tempfile

import pytest
from mcqfmt_helpers import build

import mcq_format as m

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="mcq-fuzz-")
_VALID = os.path.join(_DIR, "valid.mcq")
build(_VALID)
with open(_VALID, "rb") as _f:
    _BYTES = _f.read()
_HEADER_END = 8 + int.from_bytes(_BYTES[:8], "little")

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(_BYTES) - 1), st.integers(1, 255)),
    st.tuples(st.just("flip"), st.integers(0, _HEADER_END - 1), st.integers(1, 255)),  # header-heavy
    st.tuples(st.just("cut"), st.integers(0, len(_BYTES) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(_BYTES)), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(_BYTES) - 1), st.just(0)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in mutations:
        pos = min(pos, max(len(buf) - 1, 0))
        if kind == "flip" and buf:
            buf[pos] ^= value
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf.insert(pos, value)
        elif kind == "delete" and buf:
            del buf[pos]
    return bytes(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutations_only_raise_format_errors(mutations):
    data = _mutate(_BYTES, mutations)
    path = os.path.join(_DIR, "mutated.mcq")
    with open(path, "wb") as f:
        f.write(data)
    try:
        m.validate(path, verify=True)
    except m.McqFormatError:
        pass


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_random_sections_only_raise_format_errors(payload):
    try:
        m.decode_section("fuzz", payload)
    except m.McqFormatError:
        pass
