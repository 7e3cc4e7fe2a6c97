"""Single-bit corruption anywhere in a bundle is always detected by ``validate(verify=True)``."""

from __future__ import annotations

import random

import pytest
from mcqfmt_helpers import build

import mcq_format as m


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("flips") / "small.mcq"
    build(path)
    return path.read_bytes()


def _rejected(path, data: bytes) -> str | None:
    path.write_bytes(data)
    try:
        m.validate(path, verify=True)
    except m.McqFormatError as exc:
        return exc.code
    return None


def _flip(data: bytes, bit: int) -> bytes:
    buf = bytearray(data)
    buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf)


def test_1000_random_single_bit_flips_are_all_rejected(bundle_bytes, tmp_path):
    rng = random.Random(1234)
    path = tmp_path / "flipped.mcq"
    missed = [b for b in rng.sample(range(len(bundle_bytes) * 8), 1000) if _rejected(path, _flip(bundle_bytes, b)) is None]
    assert missed == []


def test_every_bit_of_the_header_padding_and_length(bundle_bytes, tmp_path):
    """The u64 length, the JSON's closing brace and every padding byte: all 8 bits each."""
    n = int.from_bytes(bundle_bytes[:8], "little")
    header = bundle_bytes[8 : 8 + n]
    end = len(header.rstrip(b" "))
    assert (8 + n) % 64 == 0 and n - end > 0  # the writer pads with spaces to 64-byte alignment
    positions = list(range(8)) + list(range(8 + end - 1, 8 + n))
    path = tmp_path / "flipped.mcq"
    missed = [(p, b) for p in positions for b in range(8) if _rejected(path, _flip(bundle_bytes, p * 8 + b)) is None]
    assert missed == []


@pytest.mark.parametrize("pad", [b"\t", b"\n", b"\r", b"\x00"])
def test_header_padding_must_be_spaces(bundle_bytes, tmp_path, pad):
    n = int.from_bytes(bundle_bytes[:8], "little")
    data = bundle_bytes[: 8 + n - 1] + pad + bundle_bytes[8 + n :]
    assert _rejected(tmp_path / "pad.mcq", data) == "E111_HEADER_JSON"


def test_whitespace_inside_the_json_is_still_accepted(bundle_bytes, tmp_path):
    """Only the padding after the object is restricted; a reformatted header stays readable."""
    n = int.from_bytes(bundle_bytes[:8], "little")
    header = bundle_bytes[8 : 8 + n].rstrip(b" ")
    assert header.endswith(b"}}")
    spaced = header[:-1] + b"\n}"
    data = len(spaced).to_bytes(8, "little") + spaced + bundle_bytes[8 + n :]
    assert _rejected(tmp_path / "spaced.mcq", data) is None
