"""StreamWriter: a bundle written tensor by tensor is byte-identical to write(), atomic, and
leaves no spool behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mcqfmt_helpers import model_tensors, sections, sections_without_tensors
from test_format_roundtrip import all_dtypes

import mcq_format as m
from mcq_format import container


def test_stream_writer_is_byte_identical_to_write(tmp_path):
    tensors = all_dtypes()
    m.write(tmp_path / "a.mcq", tensors, sections_without_tensors(), {"k": "v"})
    with m.StreamWriter(tmp_path / "b.mcq") as w:
        for name, value in reversed(list(tensors.items())):  # arrival order does not matter
            w.add(name, value)
        assert "t.F32" in w and "nope" not in w
        w.finish(sections_without_tensors(), {"k": "v"})
    assert (tmp_path / "a.mcq").read_bytes() == (tmp_path / "b.mcq").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.mcq", "b.mcq"]  # the spool is gone
    with m.read(tmp_path / "b.mcq") as b:
        b.verify()
        np.testing.assert_array_equal(b.tensor("t.I64"), tensors["t.I64"])


def test_stream_writer_copies_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(container.FileRegion, "CHUNK", 7)  # many short reads per tensor
    tensors = model_tensors()
    m.write(tmp_path / "a.mcq", tensors, sections())
    with m.StreamWriter(tmp_path / "b.mcq") as w:
        for name, value in tensors.items():
            w.add(name, value)
        w.finish(sections())
    assert (tmp_path / "a.mcq").read_bytes() == (tmp_path / "b.mcq").read_bytes()


def test_stream_writer_rejects_bad_names_and_duplicates(tmp_path):
    with m.StreamWriter(tmp_path / "x.mcq") as w:
        w.add("a", np.zeros(2, np.float32))
        with pytest.raises(m.TensorNameError, match="already added"):
            w.add("a", np.zeros(2, np.float32))
        with pytest.raises(m.TensorNameError, match="reserved prefix"):
            w.add("__mcq__/manifest", np.zeros(2, np.uint8))
        with pytest.raises(m.MetadataError, match="reserved"):
            w.finish(sections(), {"format": "x"})
    assert os.listdir(tmp_path) == []


def test_stream_writer_abandoned_or_failing_leaves_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "model.mcq"
    m.write(p, model_tensors(), sections())
    before = p.read_bytes()
    with pytest.raises(RuntimeError, match="calibration failed"):
        with m.StreamWriter(p) as w:
            w.add("embed.weight", model_tensors()["embed.weight"])
            raise RuntimeError("calibration failed")
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["model.mcq"]

    def crash(f, header, tensors):
        f.write(header)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(container, "_write_chunks", crash)
    w = m.StreamWriter(p)
    for name, value in model_tensors().items():
        w.add(name, value)
    with pytest.raises(OSError, match="No space"):
        w.finish(sections())
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["model.mcq"]
    with pytest.raises(ValueError, match="closed"):
        w.add("late", np.zeros(1, np.float32))
