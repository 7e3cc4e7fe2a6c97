"""Builders of valid and deliberately broken .mcq files for the format tests."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import pathlib
import struct
from typing import Any

import numpy as np

from mcq_format import constants as C
from mcq_format.container import RawTensor, to_raw, write_container
from mcq_format.sections import encode_section

# a causal LM's entry points (spec 5.3.1): prefill over the prompt, decode one token after it
IO_X = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}
IO_POS = {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}
IO_Y = {"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 4]}
IO_DECODE = {"name": "input_ids", "dtype": "int64", "shape": ["batch", 1]}, \
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "past+1"]}


def model_tensors() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "lm_head/weight": rng.integers(-127, 127, (4, 4), dtype=np.int8),
        "lm_head/weight.scale": np.full((4,), 0.5, np.float32),
        "lm_head/weight.zero_point": np.zeros((4,), np.int8),
        "norm.bf16": RawTensor("BF16", (4,), bytes(range(8))),
    }


def _inputs(entry: str) -> list[dict[str, Any]]:
    return [dict(x) for x in (IO_DECODE if entry == "decode" else (IO_X, IO_POS))]


def graph(name: str = "decode") -> dict[str, Any]:
    return {
        "version": 1,
        "name": name,
        "inputs": _inputs(name),
        "nodes": [
            {
                "name": "emb",
                "op": "aten.embedding.default",
                "args": [["tensor", "embed.weight"], ["ref", "input_ids"]],
                "kwargs": {},
            },
            {
                "name": "cast",
                "op": "aten._to_copy.default",
                "args": [["ref", "emb"]],
                "kwargs": {
                    "dtype": ["dtype", "float32"],
                    "device": ["device", "cpu"],
                    "layout": ["layout", "strided"],
                    "memory_format": ["memory_format", "preserve_format"],
                },
                "meta": {"shape": ["batch", "seq", 4]},
            },
            {"name": "n", "op": "aten.sym_size.int", "args": [["ref", "input_ids"], 1], "kwargs": {}},
            {"name": "act", "op": "aten.gelu.default", "args": [["ref", "cast"]], "kwargs": {"approximate": ["str", "tanh"]},
             "qkey": "act"},  # a quant point the qformat does not quantize
            {"name": "rows", "op": "aten.view.default", "args": [["ref", "act"], ["list", [-1, ["ref", "n"], 4]]],
             "kwargs": {}},
            {
                "name": "head",
                "op": "aten.linear.default",
                "args": [["ref", "rows"], ["tensor", "lm_head/weight"], None],
                "kwargs": {},
                "qkey": "lm_head",
            },
        ],
        "outputs": [{"name": "logits", "value": ["ref", "head"]}],
    }


def manifest(entries: tuple[str, ...] = ("prefill", "decode")) -> dict[str, Any]:
    return {
        "format": "mcq",
        "format_version": [1, 0],
        "opset_version": 1,
        "producer": {"name": "tests", "version": "0"},
        "model": {"family": "toy", "config": {"hidden": 4}},
        "entry_points": {
            e: {"graph": f"graph/{e}", "inputs": _inputs(e), "outputs": [dict(IO_Y)]}
            for e in entries
        },
        "quant": {"scheme": "w8"},
        "tokenizer": {"kind": "hf-tokenizers-json"},
    }


def sections() -> dict[str, Any]:
    return {
        "manifest": manifest(),
        "graph/prefill": graph("prefill"),
        "graph/decode": graph("decode"),
        "qformat": {
            "version": 1,
            "nodes": {
                "lm_head": {  # an int8 weight per output channel
                    "kind": "linear",
                    "inputs": {},
                    "weight": {"dtype": "int8", "nbits": 8, "symmetric": True, "granularity": "channel",
                               "axis": 0, "scale": "lm_head/weight.scale", "zero_point": "lm_head/weight.zero_point"},
                }
            },
        },
        "tokenizer": {"kind": "hf-tokenizers-json", "json": '{"model": {}}'},
    }


def sections_without_tensors() -> dict[str, Any]:
    """A valid bundle whose graphs and qformat reference no tensors."""
    secs = sections()
    for entry in ("prefill", "decode"):
        g = secs[f"graph/{entry}"]
        g["nodes"] = [
            {"name": "b", "op": "aten.sym_size.int", "args": [["ref", "input_ids"], 0], "kwargs": {}},
            {"name": "s", "op": "aten.sym_size.int", "args": [["ref", "input_ids"], 1], "kwargs": {}},
            {"name": "zeros", "op": "aten.new_zeros.default",
             "args": [["ref", "input_ids"], ["list", [["ref", "b"], ["ref", "s"], 4]]],
             "kwargs": {"dtype": ["dtype", "float32"]}},
        ]
        g["outputs"] = [{"name": "logits", "value": ["ref", "zeros"]}]
    secs["qformat"] = {"version": 1, "nodes": {}}
    return secs


def build(
    path: Any,
    *,
    tensors: dict[str, Any] | None = None,
    sections_: dict[str, Any] | None = None,
    meta: dict[str, str | None] | None = None,
    digests: bool = True,
) -> None:
    """Write a bundle with write_container only, so that any section content can be stored.

    ``sections_`` values are objects (encoded) or bytes (stored as they are);
    hashes are computed for what is stored.  ``meta`` entries override the
    computed metadata; a value of None deletes the key.
    """
    tensors = model_tensors() if tensors is None else tensors
    secs = sections() if sections_ is None else sections_
    raw = {n: to_raw(n, v) for n, v in tensors.items()}
    if digests and C.SECTION_TENSOR_SHA256 not in secs:
        secs = dict(secs)
        secs[C.SECTION_TENSOR_SHA256] = {n: hashlib.sha256(r.data).digest() for n, r in raw.items()}
    metadata = {
        "format": "mcq",
        "mcq.format_version": "1.0",
        "mcq.opset_version": "1",
    }
    all_tensors: dict[str, Any] = dict(raw)
    for name, obj in secs.items():
        data = obj if isinstance(obj, bytes) else encode_section(obj, name)
        metadata["mcq.sha256." + name] = hashlib.sha256(data).hexdigest()
        all_tensors["__mcq__/" + name] = np.frombuffer(data, np.uint8)
    for key, value in (meta or {}).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    write_container(path, all_tensors, metadata)


def with_section(name: str, obj: Any) -> dict[str, Any]:
    secs = sections()
    secs[name] = obj
    return secs


def edit(name: str, fn: Any) -> dict[str, Any]:
    """sections() with ``fn`` applied to a deep copy of section ``name``."""
    secs = sections()
    obj = copy.deepcopy(secs[name])
    fn(obj)
    secs[name] = obj
    return secs


def raw_file(path: Any, header: Any, data: bytes = b"", *, length: int | None = None) -> None:
    """Write a raw container: ``header`` is an object (JSON-encoded) or bytes."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + text + data)


def meta_ok() -> dict[str, str]:
    return {"format": "mcq", "mcq.format_version": "1.0", "mcq.opset_version": "1"}


CONFORMANCE = pathlib.Path(__file__).resolve().parents[2] / "spec" / "conformance"
VALID = CONFORMANCE / "v1.0" / "valid"


@functools.cache
def conformance_generate() -> Any:
    """spec/conformance/generate.py as a module: its Parts re-sign every hash of an edited bundle."""
    spec = importlib.util.spec_from_file_location("conformance_generate", CONFORMANCE / "generate.py")
    gen = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    return gen
