"""Round trips, determinism, alignment, atomicity and safetensors compatibility."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mcqfmt_helpers import model_tensors, sections, sections_without_tensors

import mcq_format as m
from mcq_format import constants as C
from mcq_format import container
from mcq_format.container import open_container

EXACT = {
    "F32": np.float32,
    "F16": np.float16,
    "I8": np.int8,
    "U8": np.uint8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
}


def all_dtypes() -> dict[str, object]:
    rng = np.random.default_rng(1)
    out: dict[str, object] = {}
    for name, np_type in EXACT.items():
        if name == "BOOL":
            arr = rng.integers(0, 2, (3, 5)).astype(np.bool_)
        elif np.issubdtype(np_type, np.floating):
            arr = rng.standard_normal((3, 5)).astype(np_type)
        else:
            info = np.iinfo(np_type)
            arr = rng.integers(info.min, info.max, (3, 5), dtype=np_type, endpoint=True)
        out[f"t.{name}"] = arr
        out[f"scalar.{name}"] = np.array(arr[0, 0])
        out[f"empty.{name}"] = arr[:0]
    out["npscalar.I32"] = np.int32(-7)  # numpy scalars are written as 0-d tensors
    out["t.BF16"] = m.RawTensor("BF16", (2, 3), bytes(range(12)))
    out["t.F8_E4M3"] = m.RawTensor("F8_E4M3", (7,), bytes(range(7)))
    out["empty.BF16"] = m.RawTensor("BF16", (0, 4), b"")
    out["scalar.F8_E4M3"] = ("F8_E4M3", (), b"\x7e")
    return out


def expected_array(value: object) -> np.ndarray:
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value)
    dtype, shape, data = value  # type: ignore[misc]
    return np.frombuffer(bytes(data), C.DTYPES[dtype].numpy).reshape(shape)


@pytest.fixture()
def written(tmp_path):
    p = tmp_path / "all.mcq"
    tensors = all_dtypes()
    m.write(p, tensors, sections_without_tensors(), metadata={"author": "tests", "ünï": "cödé ✓"})
    return p, tensors


def test_round_trip_every_dtype(written):
    p, tensors = written
    with m.read(p) as bundle:
        assert bundle.tensor_names() == sorted(tensors)
        for name, value in tensors.items():
            got = bundle.tensor(name)
            want = expected_array(value)
            assert got.dtype == want.dtype.newbyteorder("<") or got.dtype == want.dtype
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            dtype = name.split(".")[1]
            assert bundle.tensor_info(name) == (dtype, want.shape)
            assert bundle.tensor_info(name).nbytes == got.nbytes
        assert bundle.metadata["author"] == "tests"
        assert bundle.metadata["ünï"] == "cödé ✓"
        assert bundle.format_version == (1, 0)
        assert bundle.opset_version == 1
        assert bundle.sections["graph/decode"] == sections_without_tensors()["graph/decode"]
        assert bundle.sections["tokenizer"]["json"] == '{"model": {}}'
    report = m.validate(p, verify=True)
    assert report.verified and report.tensor_count == len(tensors)
    assert report.sections == ("graph/decode", "graph/prefill", "manifest", "qformat", "tensor_sha256", "tokenizer")


def test_views_are_zero_copy_and_read_only(written):
    p, _ = written
    with open_container(p) as c:
        arr = c.tensor("t.F32")
        assert not arr.flags.writeable
        assert isinstance(arr.base, np.ndarray) or arr.base is not None
        assert np.shares_memory(arr, c._mmap)
        with pytest.raises(ValueError):
            arr[0, 0] = 1


def test_layout_alignment_and_order(written):
    p, _ = written
    header = container.parse_header(p)
    assert header.data_start % C.DATA_ALIGNMENT == 0
    sizes = []
    for info in header.tensors.values():
        itemsize = C.DTYPES[info.dtype].itemsize
        assert (header.data_start + info.begin) % itemsize == 0, info
        sizes.append((-itemsize, info.name))
    assert sizes == sorted(sizes)  # larger item size first, then by name


def test_deterministic(tmp_path):
    a, b = tmp_path / "a.mcq", tmp_path / "b.mcq"
    tensors = all_dtypes()
    m.write(a, tensors, sections_without_tensors(), {"k": "v", "a": "b"})
    reordered = dict(reversed(list(tensors.items())))
    secs = {k: v for k, v in reversed(list(sections_without_tensors().items()))}
    secs["manifest"] = dict(reversed(list(secs["manifest"].items())))
    m.write(b, reordered, secs, {"a": "b", "k": "v"})
    assert a.read_bytes() == b.read_bytes()
    m.write(b, tensors, sections_without_tensors(), {"k": "v", "a": "b"})
    assert a.read_bytes() == b.read_bytes()


def test_byte_order_and_strides_are_normalised(tmp_path):
    p = tmp_path / "be.mcq"
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[::2, 1::2]
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    m.write(p, {"big": big, "strided": strided, "fortran": fortran}, sections_without_tensors())
    with m.read(p) as bundle:
        np.testing.assert_array_equal(bundle.tensor("big"), big)
        assert bundle.tensor("big").dtype == np.dtype("<i4")
        np.testing.assert_array_equal(bundle.tensor("strided"), strided)
        np.testing.assert_array_equal(bundle.tensor("fortran"), fortran)


def test_empty_bundle(tmp_path):
    p = tmp_path / "empty.mcq"
    m.write(p, {}, sections_without_tensors())
    with m.read(p) as bundle:
        assert bundle.tensor_names() == []
    m.validate(p, verify=True)


def test_safetensors_library_reads_everything(written):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    p, tensors = written
    with safe_open(str(p), "np") as f:
        meta = f.metadata()
        keys = set(f.keys())
        for name, value in tensors.items():
            if isinstance(value, (np.ndarray, np.generic)):
                np.testing.assert_array_equal(f.get_tensor(name), value)
    assert keys == set(tensors) | {"__mcq__/" + s for s in m.read(p).sections}
    assert meta == m.read(p).metadata
    assert meta["ünï"] == "cödé ✓" and meta["format"] == "mcq"
    # Without the dtypes numpy lacks, load_file reads the whole file.
    q = p.with_name("numpy_only.mcq")
    numpy_only = {k: np.asarray(v) for k, v in tensors.items() if isinstance(v, (np.ndarray, np.generic))}
    m.write(q, numpy_only, sections_without_tensors(), {"x": "y"})
    loaded = load_file(str(q))
    for name, value in numpy_only.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype
    manifest = loaded["__mcq__/manifest"].tobytes()
    assert m.decode_section("manifest", manifest) == m.read(q).sections["manifest"]


def test_newer_minor_is_accepted_unknown_fields_and_sections_ignored(tmp_path):
    from mcqfmt_helpers import build, edit

    p = tmp_path / "minor.mcq"
    secs = edit("manifest", lambda x: x.update(format_version=[1, 7], future_field={"a": 1}))
    secs["graph/decode"]["nodes"][0]["future"] = [1, 2]
    secs["future_section"] = {"anything": [1, "two", b"3"]}
    build(p, sections_=secs, meta={"mcq.format_version": "1.7", "mcq.future": "x"})
    with m.read(p) as bundle:
        assert bundle.format_version == (1, 7)
        assert bundle.sections["future_section"] == {"anything": [1, "two", b"3"]}


def test_msgpack_depth_limit_boundary(tmp_path):
    obj: object = 1
    for _ in range(C.MSGPACK_MAX_DEPTH):
        obj = [obj]
    data = m.encode_section(obj)
    assert m.decode_section("x", data) == obj
    with pytest.raises(m.MsgpackLimitError):
        m.decode_section("x", b"\x91" + data)


def test_encode_section_sorts_keys_recursively():
    a = m.encode_section({"b": {"y": 1, "x": 2}, "a": [{"d": 1, "c": 2}]})
    b = m.encode_section({"a": [{"c": 2, "d": 1}], "b": {"x": 2, "y": 1}})
    assert a == b
    assert m.encode_section({"n": np.int64(3), "f": np.float32(0.5), "t": (1, 2)}) == m.encode_section(
        {"f": 0.5, "n": 3, "t": [1, 2]}
    )


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("exc", [Crash, KeyboardInterrupt])
def test_atomic_write_keeps_previous_file(tmp_path, monkeypatch, exc):
    p = tmp_path / "model.mcq"
    m.write(p, model_tensors(), sections())
    before = p.read_bytes()

    def crash(f, header, tensors):
        f.write(header)
        f.write(tensors[0][1].data[:3])
        raise exc("power cut")

    monkeypatch.setattr(container, "_write_chunks", crash)
    with pytest.raises(exc):
        m.write(p, all_dtypes(), sections_without_tensors())
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.mcq"]
    monkeypatch.undo()
    q = tmp_path / "new.mcq"
    monkeypatch.setattr(container, "_write_chunks", crash)
    with pytest.raises(exc):
        m.write(q, model_tensors(), sections())
    assert os.listdir(tmp_path) == ["model.mcq"]


def test_atomic_write_failing_fsync(tmp_path, monkeypatch):
    p = tmp_path / "model.mcq"
    p.write_bytes(b"old")

    def bad_fsync(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(container.os, "fsync", bad_fsync)
    with pytest.raises(OSError):
        m.write(p, model_tensors(), sections())
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.mcq"]


def test_write_preserves_existing_mode(tmp_path):
    p = tmp_path / "mode.mcq"
    m.write(p, model_tensors(), sections())
    assert (p.stat().st_mode & 0o777) == 0o644
    p.chmod(0o600)
    m.write(p, model_tensors(), sections())
    assert (p.stat().st_mode & 0o777) == 0o600
