"""(Re)generate the conformance vectors of one format version, deterministically.

    python spec/conformance/generate.py [--out spec/conformance/v1.0] [--only-invalid]

VALID vectors: golden bundles quantized from seeded tiny random-weight models (every preset,
weight/activation/KV dtype and granularity the toolkit supports), each with the inputs and the
expected outputs of its entry points at qlevel 4 (and qlevel 2) in ``.npz`` files next to it.
INVALID vectors: one file per failure class, each crafted from the small ``llama-mini-w8a8kv8``
bundle so that it fails for exactly one reason (section hashes are re-signed where needed), with
the expected error code.  Everything is listed in ``manifest.json``.

Needs the toolkit (``mcq``, torch, transformers) for the valid bundles; the invalid files only
need ``mcq_format``.  Released vector folders are never regenerated in place: see README.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import os
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mcq_format  # noqa: E402
from mcq_format import constants as C  # noqa: E402
from mcq_format.container import open_container  # noqa: E402
from mcq_format.sections import encode_section  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "v1.0"
BASE = "llama-mini-w8a8kv8"  # the valid bundle the invalid files are crafted from

# name -> (model, preset, config overrides, what it covers)
VALID: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "llama-tiny-w8a8kv8": ("llama-tiny", "W8A8KV8", {},
                           "Llama, GQA 4q/2kv heads, int8 per-channel weights (SmoothQuant), int8 per-tensor "
                           "asym activations, int8 KV cache per KV head, Q.K^T bmm per head"),
    "gptj-tiny-w8a8kv8": ("gptj-tiny", "W8A8KV8", {}, "GPT-J, partial rotary, MHA, W8A8KV8"),
    "gpt2-tiny-w8a16": ("gpt2-tiny", "W8A16", {}, "GPT-2, int8 per-channel weights, float activations and KV"),
    "llama-tiny-float": ("llama-tiny", "FLOAT", {}, "Llama, nothing quantized (float graph, qlevel 0)"),
    "llama-mini-w8a8kv8": ("llama-mini", "W8A8KV8", {}, "1-layer Llama, W8A8KV8; base of the invalid files"),
    "llama-mini-w8a8": ("llama-mini", "W8A8", {}, "1-layer Llama, W8A8 (int8 activations, float KV)"),
    "gpt2-mini-w8a8kv8-tensor-sym": (
        "gpt2-mini", "W8A8KV8",
        {"weight_granularity": "tensor", "act_calib_method": "AMAX_SYM", "smoothquant": False},
        "1-layer GPT-2, per-tensor weights, symmetric activations, no SmoothQuant, int8 KV"),
    "gpt2-mini-w8a8kv8-rotated": (
        "gpt2-mini", "W8A8KV8", {"act_rotation": True},
        "1-layer GPT-2, every linear input rotated (granularity rotated_tensor: Kronecker factors, "
        "outlier channels, smoothing), token table tied to the rotated lm_head (rotated back by a matmul)"),
}
# vectors are built from the presets without their per-node overrides (the W8A8 presets' rotated
# MLP-output and lm_head inputs came after the first vectors): rotation has a vector of its own
PRESET_OVERRIDES = False
QLEVELS = {"quant": (4, 2), "float": (4,)}
# bundles whose linears are all weight-only: their qlevel-4 expected outputs are the reference
# (qlevel 2 = qlevel 3 for them), compared within an end-to-end allowance for Q.4a kernels
WEIGHT_ONLY_PRESETS = ("W8A16", "W4A16")
WEIGHT_ONLY_ATOL, WEIGHT_ONLY_RTOL = 1e-2, 1e-2
BATCH, SEQ = 2, 6


# ------------------------------------------------------------------ deterministic npz
def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez-compatible, but byte-deterministic (fixed zip timestamps, sorted members)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    path.write_bytes(buf.getvalue())


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ valid bundles
def build_model(name: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from mcq.examples import load_example

    if name == "llama-mini":
        cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2)
    elif name == "gpt2-mini":
        cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=4, n_positions=64,
                         bos_token_id=1, eos_token_id=2)
    else:
        return load_example(name)[0]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def make_inputs(manifest: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed left-padded prefill batch and one decode token per row."""
    vocab = int(manifest["model"]["config"]["vocab_size"])
    pad = int((manifest.get("tokenizer") or {}).get("pad_token_id") or 0)
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (BATCH, SEQ), dtype=np.int64)
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[0, :3] = 0  # row 0: 3 pad tokens on the left
    ids[mask == 0] = pad
    nxt = rng.integers(3, vocab, (BATCH, 1), dtype=np.int64)
    return ids, mask, nxt


def generate_valid(out: Path, entries: list[dict[str, Any]]) -> None:
    import mcq

    sys.path.insert(0, str(HERE))
    from runner import ReferenceImpl  # the same code path the runner checks with

    impl = ReferenceImpl()
    folder = out / "valid"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (model_name, preset, overrides, covers)) in enumerate(VALID.items()):
        cfg = mcq.preset(preset)
        if not PRESET_OVERRIDES:
            cfg = dataclasses.replace(cfg, overrides=())
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        q = mcq.quantize(build_model(model_name), cfg, progress=False, max_samples=8, seq_len=32)
        path = folder / f"{name}.mcq"
        q.save(path)
        bundle = mcq_format.read(path)
        manifest = bundle.sections["manifest"]
        quantized = bool((bundle.sections.get("qformat") or {}).get("nodes"))
        bundle.close()
        ids, mask, nxt = make_inputs(manifest, seed=1000 + i)
        vectors = []
        for qlevel in QLEVELS["quant" if quantized else "float"]:
            pre_in = {"input_ids": ids, "attention_mask": mask}
            pre_out = impl.run(str(path), qlevel, "prefill", pre_in)
            past_names = [io_["name"] for io_ in manifest["entry_points"]["decode"]["inputs"][2:]]
            present = [k for k in pre_out if k != "logits"]
            dec_in = {"input_ids": nxt, "attention_mask": np.concatenate([mask, np.ones_like(nxt)], 1)}
            dec_in.update({p: pre_out[k] for p, k in zip(past_names, present)})
            dec_out = impl.run(str(path), qlevel, "decode", dec_in)
            if qlevel == 4 and preset in WEIGHT_ONLY_PRESETS:  # expected: the reference (Q.4a)
                pre_out = impl.run(str(path), 3, "prefill", pre_in)
                dec_in.update({p: pre_out[k] for p, k in zip(past_names, present)})
                dec_out = impl.run(str(path), 3, "decode", dec_in)
            for entry, ins, outs in (("prefill", pre_in, pre_out), ("decode", dec_in, dec_out)):
                npz = folder / f"{name}.{entry}.q{qlevel}.npz"
                arrays = {f"in.{k}": v for k, v in ins.items()}
                arrays.update({f"out.{k}": v for k, v in outs.items()})
                save_npz(npz, arrays)
                vectors.append({"entry_point": entry, "qlevel": qlevel,
                                "file": npz.relative_to(out).as_posix(), "sha256": sha256_file(npz)})
        entries.append({"name": name, "file": path.relative_to(out).as_posix(), "sha256": sha256_file(path),
                        "model": model_name, "preset": preset, "config_overrides": overrides,
                        "covers": covers, "quantized": quantized, "vectors": vectors})
        print(f"valid   {name:34s} {path.stat().st_size:>9,d} bytes, {len(vectors)} vectors")


# ------------------------------------------------------------------ crafting invalid files
class Parts:
    """A bundle taken apart: model tensors (raw), sections (objects or raw bytes), metadata edits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open_container(path) as c:
            self.tensors: dict[str, tuple[str, list[int], bytes]] = {
                n: (t.dtype, list(t.shape), bytes(c.raw(n)))
                for n, t in c.header.tensors.items() if not n.startswith(C.SECTION_PREFIX)
            }
            self.extra_meta = {k: v for k, v in c.metadata.items()
                               if k != C.META_FORMAT and not k.startswith(C.RESERVED_META_PREFIX)}
        with mcq_format.read(path) as b:
            self.sections: dict[str, Any] = copy.deepcopy(b.sections)
        self.meta: dict[str, str | None] = {}  # overrides applied last; None deletes
        self.section_dtype: dict[str, str] = {}  # store a section with another dtype
        self.no_resign: set[str] = set()  # keep the hash of the unmodified section

    def header(self) -> tuple[dict[str, Any], bytes]:
        """The header object (before JSON encoding) and the data buffer, laid out as writers do."""
        metadata: dict[str, str] = {"format": C.FORMAT_NAME, C.META_FORMAT_VERSION: "1.0",
                                    C.META_OPSET_VERSION: "1", **self.extra_meta}
        items: list[tuple[str, str, list[int], bytes]] = [(n, *t) for n, t in self.tensors.items()]
        for name, obj in self.sections.items():
            data = obj if isinstance(obj, bytes) else encode_section(obj, name)
            signed = data
            if name in self.no_resign:
                signed = encode_section(ORIGINAL.sections[name], name)
            metadata[C.META_SHA256_PREFIX + name] = hashlib.sha256(signed).hexdigest()
            dtype = self.section_dtype.get(name, "U8")
            size = C.DTYPES[dtype].itemsize
            items.append((C.SECTION_PREFIX + name, dtype, [len(data) // size], data[: len(data) // size * size]))
        for key, value in self.meta.items():
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = value
        items.sort(key=lambda t: (-C.DTYPES[t[1]].itemsize, t[0]))
        obj: dict[str, Any] = {C.METADATA_KEY: metadata}
        offset, chunks = 0, []
        for name, dtype, shape, data in items:
            obj[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
            chunks.append(data)
        return obj, b"".join(chunks)

    def build(self, edit_header: Callable[[dict[str, Any]], None] | None = None,
              edit_text: Callable[[str], str] | None = None) -> bytes:
        obj, data = self.header()
        if edit_header:
            edit_header(obj)
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if edit_text:
            text = edit_text(text)
        return frame(text.encode("utf-8"), data)


def frame(header: bytes, data: bytes, length: int | None = None) -> bytes:
    """u64 length + header padded with spaces to the 64-byte data alignment + data."""
    header += b" " * (-(8 + len(header)) % C.DATA_ALIGNMENT)
    return struct.pack("<Q", len(header) if length is None else length) + header + data


ORIGINAL: Parts  # set in generate_invalid


def _graph(p: Parts, entry: str = "prefill") -> dict[str, Any]:
    return p.sections["graph/" + entry]


def _first_ref_arg(g: dict[str, Any], start: int = 1) -> tuple[int, int]:
    """(node index, arg index) of the first ['ref', x] argument of a node at or after ``start``."""
    for i, node in enumerate(g["nodes"][start:], start):
        for j, arg in enumerate(node["args"]):
            if isinstance(arg, list) and len(arg) == 2 and arg[0] == "ref":
                return i, j
    raise AssertionError("no ref argument found")


def _first_tensor_arg(g: dict[str, Any]) -> tuple[int, int]:
    for i, node in enumerate(g["nodes"]):
        for j, arg in enumerate(node["args"]):
            if isinstance(arg, list) and len(arg) == 2 and arg[0] == "tensor":
                return i, j
    raise AssertionError("no tensor argument found")


def _set_op(op: str) -> Callable[[Parts], bytes]:
    def fn(p: Parts) -> bytes:
        _graph(p)["nodes"][1]["op"] = op
        return p.build()
    return fn


def _msgpack_section(raw: bytes) -> Callable[[Parts], bytes]:
    def fn(p: Parts) -> bytes:
        p.sections["manifest"] = raw
        return p.build()
    return fn


def _retype_tensor(p: Parts, edit: Callable[[dict[str, Any]], None]) -> bytes:
    def e(obj: dict[str, Any]) -> None:
        name = next(n for n in sorted(obj) if n != C.METADATA_KEY and not n.startswith(C.SECTION_PREFIX)
                    and len(obj[n]["shape"]) >= 2)
        edit(obj[name])
    return p.build(edit_header=e)


def _tensor_entry(obj: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The header entry of the first model tensor of ``dtype``."""
    return next(obj[n] for n in sorted(obj) if n != C.METADATA_KEY and not n.startswith(C.SECTION_PREFIX)
                and obj[n]["dtype"] == dtype)


def _last_entry(obj: dict[str, Any]) -> dict[str, Any]:
    return max((e for n, e in obj.items() if n != C.METADATA_KEY), key=lambda e: e["data_offsets"][0])


def _array32_bomb() -> bytes:
    return b"\xdd\xff\xff\xff\xff"  # array32 declaring 4,294,967,295 elements, no body


def _map_bomb() -> bytes:
    return b"\xdf\xff\xff\xff\xff"


def _depth_bomb() -> bytes:
    return b"\x91" * 100_000 + b"\xc0"  # 100,000 nested one-element arrays


def _pickle_bytes() -> bytes:
    import pickle

    class _Eval:  # what a malicious pickle would carry: a call of builtins.eval on load
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (eval, ("__import__('os').system('echo pwned')",))

    return pickle.dumps(_Eval(), protocol=4)


def _qformat_scale(p: Parts, value: Any) -> None:
    nodes = p.sections["qformat"]["nodes"]
    for key in sorted(nodes):
        spec = (nodes[key].get("inputs") or {}).get("x")
        if isinstance(spec, dict) and isinstance(spec.get("scale"), str):
            spec["scale"] = value
            return
    raise AssertionError("no activation scale in qformat")


def _corrupt_weight(p: Parts) -> bytes:
    name = next(n for n in sorted(p.tensors) if p.tensors[n][0] == "I8")
    dtype, shape, data = p.tensors[name]
    p.tensors[name] = (dtype, shape, bytes([data[0] ^ 0x01]) + data[1:])
    return p.build()


def _edit_manifest_inputs(p: Parts) -> bytes:
    p.sections["manifest"]["entry_points"]["decode"]["inputs"].pop()
    return p.build()


# ---- helpers of the E4xx (quantization meaning) cases
Q_LINEAR = "model.layers.0.self_attn.q_proj/linear0"
K_LINEAR = "model.layers.0.self_attn.k_proj/linear0"
K_CACHE = "model.layers.0.self_attn/k_cache"


def _values(p: Parts, name: str, fn: Callable[[np.ndarray], np.ndarray], dtype: str | None = None) -> None:
    """Tensor `name` with its values replaced by fn(values) (stored as `dtype` if given)."""
    old, shape, data = p.tensors[name]
    arr = np.frombuffer(data, dtype=C.DTYPES[old].numpy).reshape(shape)
    new = np.array(fn(arr.copy()), order="C")  # (ascontiguousarray would make a scalar 1-D)
    dtype = dtype or old
    p.tensors[name] = (dtype, list(new.shape), new.astype(C.DTYPES[dtype].numpy).tobytes())


def _spec(p: Parts, qkey: str, role: str = "weight") -> dict[str, Any]:
    entry = p.sections["qformat"]["nodes"][qkey]
    return entry["weight"] if role == "weight" else entry["inputs"][role]


def _kv_point(p: Parts, entry: str = "decode") -> dict[str, Any]:
    return next(n for n in _graph(p, entry)["nodes"] if n["op"] == "mcq.kv_point")


def _node(p: Parts, op: str, entry: str = "decode", after: str | None = None) -> dict[str, Any]:
    """The first node of `op` in a graph (after the first node of op `after`, if given)."""
    nodes = _graph(p, entry)["nodes"]
    start = next(i for i, n in enumerate(nodes) if n["op"] == after) if after else 0
    return next(n for n in nodes[start:] if n["op"] == op)


def _with_chat_template(p: Parts, **change: Any) -> None:
    chat = {"syntax": "hf-jinja2/1", "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            "special_tokens": {"bos_token": "<s>"}, **change}
    p.sections["tokenizer"] = {"kind": "hf-tokenizers-json", "json": '{"model": {}}', "chat_template": chat}


def _swap_entries(p: Parts) -> None:
    eps = p.sections["manifest"]["entry_points"]
    eps["prefill"], eps["decode"] = eps["decode"], eps["prefill"]


def _from(base: str, craft: Callable[[Parts], bytes]) -> Callable[[Parts], bytes]:
    """A case crafted from another valid bundle (one with the feature the case breaks)."""
    return lambda p: craft(Parts(p.path.parent / f"{base}.mcq"))


def _edit(fn: Callable[[Parts], Any]) -> Callable[[Parts], bytes]:
    return lambda p: (fn(p), p.build())[1]


def _rename_node(p: Parts, g: dict[str, Any], i: int, new: str) -> None:
    g["nodes"][i]["name"] = new


# (slug, expected code, needs verify, description, craft)
CaseFn = Callable[[Parts], bytes]
CASES: list[tuple[str, str, bool, str, CaseFn]] = [
    # ---- E1xx: container and header
    ("empty-file", "E101_FILE_TOO_SHORT", False, "0-byte file", lambda p: b""),
    ("short-file", "E101_FILE_TOO_SHORT", False, "5 bytes, shorter than the u64 header length",
     lambda p: p.build()[:5]),
    ("header-length-u64-max", "E102_HEADER_TOO_LARGE", False,
     "header length 2^64-1 (must be rejected before allocating)",
     lambda p: struct.pack("<Q", 2**64 - 1) + p.build()[8:]),
    ("header-length-over-limit", "E102_HEADER_TOO_LARGE", False, "header length MAX_HEADER_BYTES + 1",
     lambda p: struct.pack("<Q", C.MAX_HEADER_BYTES + 1) + p.build()[8:]),
    ("header-length-zero", "E103_HEADER_LENGTH", False, "header length 0",
     lambda p: struct.pack("<Q", 0) + p.build()[8:]),
    ("header-length-past-eof", "E104_TRUNCATED", False, "header length runs past the end of the file",
     lambda p: (lambda b: struct.pack("<Q", len(b)) + b[8:])(p.build())),
    ("truncated-data", "E104_TRUNCATED", False, "last 100 bytes of the data buffer cut off",
     lambda p: p.build()[:-100]),
    ("header-not-utf8", "E110_HEADER_ENCODING", False, "an 0xFF byte inside a header string",
     lambda p: (lambda b: b.replace(b'"mcq"', b'"\xffcq"', 1))(p.build())),
    ("header-bad-json", "E111_HEADER_JSON", False, "header JSON missing its closing brace",
     lambda p: p.build(edit_text=lambda t: t[:-1] + " ")),
    ("header-nan-constant", "E111_HEADER_JSON", False, "non-standard JSON constant NaN in the header",
     lambda p: p.build(edit_text=lambda t: '{"x":NaN,' + t[1:])),
    ("header-garbage-in-padding", "E111_HEADER_JSON", False,
     "a non-space byte in the header's trailing padding",
     lambda p: (lambda b: b[: 8 + int.from_bytes(b[:8], "little") - 1] + b"!"
                + b[8 + int.from_bytes(b[:8], "little"):])(p.build())),
    ("duplicate-top-level-key", "E112_DUPLICATE_KEY", False, "'__metadata__' twice in the header object",
     lambda p: p.build(edit_text=lambda t: '{"__metadata__":{},' + t[1:])),
    ("duplicate-metadata-key", "E112_DUPLICATE_KEY", False, "key 'format' twice in __metadata__",
     lambda p: p.build(edit_text=lambda t: t.replace('"format":"mcq"', '"format":"mcq","format":"mcq"', 1))),
    ("header-array", "E113_HEADER_NOT_OBJECT", False, "header is a JSON array",
     lambda p: frame(b"[" + json.dumps(p.header()[0], sort_keys=True).encode() + b"]", p.header()[1])),
    ("tensor-entry-extra-key", "E114_TENSOR_ENTRY", False, "a tensor entry with an extra 'offset' key",
     lambda p: _retype_tensor(p, lambda e: e.__setitem__("offset", 0))),
    ("tensor-entry-not-object", "E114_TENSOR_ENTRY", False, "a tensor entry that is a list",
     lambda p: p.build(edit_header=lambda o: o.__setitem__("zz", [1, 2]))),
    ("tensor-name-empty", "E115_TENSOR_NAME", False, "a tensor named ''",
     lambda p: p.build(edit_header=lambda o: o.__setitem__("", o.pop(next(
         n for n in sorted(o) if n != C.METADATA_KEY and not n.startswith(C.SECTION_PREFIX)))))),
    ("metadata-missing", "E120_METADATA", False, "no __metadata__",
     lambda p: p.build(edit_header=lambda o: o.pop(C.METADATA_KEY))),
    ("metadata-value-not-string", "E120_METADATA", False, "a metadata value that is a number",
     lambda p: p.build(edit_header=lambda o: o[C.METADATA_KEY].__setitem__("user", 1))),
    ("metadata-format-version-missing", "E120_METADATA", False, "mcq.format_version absent",
     lambda p: (p.meta.__setitem__(C.META_FORMAT_VERSION, None), p.build())[1]),
    ("not-mcq-plain-safetensors", "E121_NOT_MCQ", False, "format = 'pt' (a plain safetensors file)",
     lambda p: (p.meta.__setitem__(C.META_FORMAT, "pt"), p.build())[1]),
    ("version-string-malformed", "E122_VERSION_STRING", False, "mcq.format_version = '01.0'",
     lambda p: (p.meta.__setitem__(C.META_FORMAT_VERSION, "01.0"), p.build())[1]),
    ("opset-string-malformed", "E122_VERSION_STRING", False, "mcq.opset_version = '+1'",
     lambda p: (p.meta.__setitem__(C.META_OPSET_VERSION, "+1"), p.build())[1]),
    ("unknown-major-version", "E123_UNSUPPORTED_VERSION", False, "mcq.format_version = '2.0'",
     lambda p: (p.meta.__setitem__(C.META_FORMAT_VERSION, "2.0"), p.build())[1]),
    ("unknown-opset", "E123_UNSUPPORTED_VERSION", False, "mcq.opset_version = '99'",
     lambda p: (p.meta.__setitem__(C.META_OPSET_VERSION, "99"), p.build())[1]),
    ("unknown-dtype", "E130_UNKNOWN_DTYPE", False, "a tensor with dtype 'F64'",
     lambda p: p.build(edit_header=lambda o: _tensor_entry(o, "F32").__setitem__("dtype", "F64"))),
    ("shape-negative", "E131_BAD_SHAPE", False, "a dimension -1",
     lambda p: _retype_tensor(p, lambda e: e.__setitem__("shape", [-1] + e["shape"][1:]))),
    ("shape-not-integer", "E131_BAD_SHAPE", False, "a dimension 4.0 (a JSON float)",
     lambda p: _retype_tensor(p, lambda e: e.__setitem__("shape", [float(d) for d in e["shape"]]))),
    ("shape-product-overflow", "E131_BAD_SHAPE", False, "shape [2^32, 2^32, 2]: product overflows u64",
     lambda p: _retype_tensor(p, lambda e: e.__setitem__("shape", [2**32, 2**32, 2]))),
    ("offsets-size-mismatch", "E132_BAD_OFFSETS", False, "data_offsets span != shape x itemsize",
     lambda p: _retype_tensor(p, lambda e: e.__setitem__("shape", [e["shape"][0] + 1] + e["shape"][1:]))),
    ("offsets-overlap", "E132_BAD_OFFSETS", False, "two tensors overlapping in the data buffer",
     lambda p: p.build(edit_header=lambda o: [_last_entry(o)["data_offsets"].__setitem__(i, v - 1)
                                              for i, v in enumerate(_last_entry(o)["data_offsets"])])),
    ("offsets-hole", "E132_BAD_OFFSETS", False, "a hole between two tensors (and a truncated end)",
     lambda p: p.build(edit_header=lambda o: [_last_entry(o)["data_offsets"].__setitem__(i, v + 1)
                                              for i, v in enumerate(_last_entry(o)["data_offsets"])])),
    ("offsets-begin-after-end", "E132_BAD_OFFSETS", False, "data_offsets [end, begin]",
     lambda p: _retype_tensor(p, lambda e: e["data_offsets"].reverse())),
    ("trailing-bytes", "E132_BAD_OFFSETS", False, "64 bytes after the last tensor",
     lambda p: p.build() + bytes(64)),
    # ---- E2xx: sections
    ("section-manifest-missing", "E200_SECTION_MISSING", False, "no manifest section",
     lambda p: (p.sections.pop("manifest"), p.build())[1]),
    ("section-graph-missing", "E200_SECTION_MISSING", False, "an entry point's graph section is absent",
     lambda p: (p.sections.pop("graph/decode"), p.build())[1]),
    ("hash-key-without-section", "E200_SECTION_MISSING", False, "mcq.sha256.extra names no section",
     lambda p: (p.meta.__setitem__("mcq.sha256.extra", "0" * 64), p.build())[1]),
    ("verify-without-tensor-sha256", "E200_SECTION_MISSING", True,
     "verify requested but the tensor_sha256 section is absent",
     lambda p: (p.sections.pop("tensor_sha256"), p.build())[1]),
    ("section-not-u8", "E201_SECTION_LAYOUT", False, "the manifest section stored as I16",
     lambda p: (p.section_dtype.__setitem__("manifest", "I16"), p.sections.__setitem__(
         "manifest", encode_section(p.sections["manifest"]) + b"\xc0" * (len(encode_section(p.sections["manifest"])) % 2)),
         p.build())[2]),
    ("section-bad-name", "E201_SECTION_LAYOUT", False, "a section named 'Bad Name'",
     lambda p: (p.sections.__setitem__("Bad Name", {}), p.build())[1]),
    ("section-hash-mismatch", "E202_SECTION_HASH", False, "manifest edited, hash not re-signed",
     lambda p: (p.sections["manifest"]["producer"].__setitem__("name", "evil"), p.no_resign.add("manifest"),
                p.build())[2]),
    ("section-hash-missing", "E202_SECTION_HASH", False, "mcq.sha256.manifest absent",
     lambda p: (p.meta.__setitem__("mcq.sha256.manifest", None), p.build())[1]),
    ("section-hash-uppercase", "E202_SECTION_HASH", False, "section hash in uppercase hex",
     lambda p: p.build(edit_header=lambda o: o[C.METADATA_KEY].__setitem__(
         "mcq.sha256.manifest", o[C.METADATA_KEY]["mcq.sha256.manifest"].upper()))),
    ("section-pickle", "E203_SECTION_MSGPACK", False,
     "a pickle (calling builtins.eval on load) instead of msgpack, hash re-signed",
     _msgpack_section(_pickle_bytes())),
    ("section-msgpack-ext", "E203_SECTION_MSGPACK", False, "msgpack ext type (timestamp)",
     _msgpack_section(b"\xd6\xff\x00\x00\x00\x00")),
    ("section-msgpack-trailing", "E203_SECTION_MSGPACK", False, "extra bytes after the msgpack object",
     lambda p: (p.sections.__setitem__("manifest", encode_section(p.sections["manifest"]) + b"\xc0"),
                p.build())[1]),
    ("section-msgpack-int-key", "E203_SECTION_MSGPACK", False, "a map with an int key",
     _msgpack_section(b"\x81\x01\xc0")),
    ("section-msgpack-truncated", "E203_SECTION_MSGPACK", False, "msgpack object cut short",
     lambda p: (p.sections.__setitem__("manifest", encode_section(p.sections["manifest"])[:-3]),
                p.build())[1]),
    ("section-msgpack-bad-utf8", "E203_SECTION_MSGPACK", False, "a msgpack str that is not UTF-8",
     _msgpack_section(b"\x81\xa1a\xa1\xff")),
    ("msgpack-depth-bomb", "E204_MSGPACK_LIMIT", False, "100,000 nested arrays",
     _msgpack_section(_depth_bomb())),
    ("msgpack-array-length-bomb", "E204_MSGPACK_LIMIT", False, "array32 declaring 2^32-1 elements in 5 bytes",
     _msgpack_section(_array32_bomb())),
    ("msgpack-map-length-bomb", "E204_MSGPACK_LIMIT", False, "map32 declaring 2^32-1 entries in 5 bytes",
     _msgpack_section(_map_bomb())),
    ("schema-manifest-field-missing", "E205_SECTION_SCHEMA", False, "manifest without 'entry_points'",
     lambda p: (p.sections["manifest"].pop("entry_points"), p.build())[1]),
    ("schema-raw-str-value", "E205_SECTION_SCHEMA", False, "an untagged str in a value position",
     lambda p: (_graph(p)["nodes"][_first_ref_arg(_graph(p))[0]]["args"].__setitem__(
         _first_ref_arg(_graph(p))[1], "x"), p.build())[1]),
    ("schema-unknown-tag", "E205_SECTION_SCHEMA", False, "value tag 'code'",
     lambda p: (_graph(p)["nodes"][_first_ref_arg(_graph(p))[0]]["args"].__setitem__(
         _first_ref_arg(_graph(p))[1], ["code", "print(1)"]), p.build())[1]),
    ("schema-qformat-scale-type", "E205_SECTION_SCHEMA", False, "a qformat scale that is a list",
     lambda p: (_qformat_scale(p, [1.0]), p.build())[1]),
    ("tensor-sha256-corrupt", "E210_TENSOR_HASH", True, "one weight byte flipped (only verify sees it)",
     _corrupt_weight),
    # ---- E3xx: graphs and entry points
    ("op-builtins-eval", "E300_OP_NOT_ALLOWED", False, "op 'builtins.eval'", _set_op("builtins.eval")),
    ("op-os-system", "E300_OP_NOT_ALLOWED", False, "op 'os.system'", _set_op("os.system")),
    ("op-dunder-import", "E300_OP_NOT_ALLOWED", False, "op '__import__'", _set_op("__import__")),
    ("op-dunder-attribute", "E300_OP_NOT_ALLOWED", False, "op 'aten.add.Tensor.__globals__'",
     _set_op("aten.add.Tensor.__globals__")),
    ("op-torch-load", "E300_OP_NOT_ALLOWED", False, "op 'torch.load'", _set_op("torch.load")),
    ("graph-dangling-ref", "E301_GRAPH_REFERENCE", False, "a ref naming a value defined nowhere",
     lambda p: (_graph(p)["nodes"][_first_ref_arg(_graph(p))[0]]["args"].__setitem__(
         _first_ref_arg(_graph(p))[1], ["ref", "no_such_value"]), p.build())[1]),
    ("graph-missing-tensor", "E302_TENSOR_REFERENCE", False, "a ['tensor', x] naming no tensor",
     lambda p: (_graph(p)["nodes"][_first_tensor_arg(_graph(p))[0]]["args"].__setitem__(
         _first_tensor_arg(_graph(p))[1], ["tensor", "no.such.weight"]), p.build())[1]),
    ("qformat-missing-scale-tensor", "E302_TENSOR_REFERENCE", False, "a qformat scale naming no tensor",
     lambda p: (_qformat_scale(p, "no.such.scale"), p.build())[1]),
    ("tensor-sha256-unknown-key", "E302_TENSOR_REFERENCE", False, "tensor_sha256 lists a tensor not in the file",
     lambda p: (p.sections["tensor_sha256"].__setitem__("ghost", bytes(32)), p.build())[1]),
    ("graph-use-before-definition", "E303_GRAPH_ORDER", False, "a ref to the last node from an earlier node",
     lambda p: (_graph(p)["nodes"][_first_ref_arg(_graph(p))[0]]["args"].__setitem__(
         _first_ref_arg(_graph(p))[1], ["ref", _graph(p)["nodes"][-1]["name"]]), p.build())[1]),
    ("graph-self-cycle", "E303_GRAPH_ORDER", False, "a node referencing itself",
     lambda p: (lambda g, ij: (g["nodes"][ij[0]]["args"].__setitem__(
         ij[1], ["ref", g["nodes"][ij[0]]["name"]]), p.build())[1])(_graph(p), _first_ref_arg(_graph(p)))),
    ("graph-duplicate-node-name", "E304_DUPLICATE_NAME", False, "two nodes with the same name",
     lambda p: (_rename_node(p, _graph(p), 1, _graph(p)["nodes"][0]["name"]), p.build())[1]),
    ("graph-node-shadows-input", "E304_DUPLICATE_NAME", False, "a node named like a graph input",
     lambda p: (_rename_node(p, _graph(p), 0, _graph(p)["inputs"][0]["name"]), p.build())[1]),
    ("graph-duplicate-output-name", "E304_DUPLICATE_NAME", False, "two graph outputs with the same name",
     lambda p: (_graph(p)["outputs"].append(dict(_graph(p)["outputs"][0])), p.build())[1]),
    ("entry-point-missing-input", "E310_ENTRY_POINT", False, "decode entry point lists one input fewer than its graph",
     _edit_manifest_inputs),
    ("header-padding-newline", "E111_HEADER_JSON", False,
     "the header's last padding byte is LF: padding after the JSON object must be spaces only",
     lambda p: (lambda b: b[: 8 + int.from_bytes(b[:8], "little") - 1] + b"\n"
                + b[8 + int.from_bytes(b[:8], "little"):])(p.build())),
    # ---- E4xx: what the quantization means (spec 5.5a)
    ("qformat-unknown-kind", "E400_QUANT_SPEC", False, "a qformat entry of kind 'conv'",
     _edit(lambda p: p.sections["qformat"]["nodes"][Q_LINEAR].__setitem__("kind", "conv"))),
    ("qformat-inputs-missing", "E400_QUANT_SPEC", False, "a qformat entry without 'inputs'",
     _edit(lambda p: p.sections["qformat"]["nodes"][Q_LINEAR].pop("inputs"))),
    ("qformat-scale-number", "E400_QUANT_SPEC", False, "a weight scale given as a number, not a tensor name",
     _edit(lambda p: _spec(p, Q_LINEAR).__setitem__("scale", 0.5))),
    ("qformat-weight-axis-out-of-range", "E400_QUANT_SPEC", False, "a 2-D weight quantized along axis 7",
     _edit(lambda p: _spec(p, Q_LINEAR).__setitem__("axis", 7))),
    ("qformat-unknown-format-id", "E400_QUANT_SPEC", False, "weight dtype 'int3'",
     _edit(lambda p: _spec(p, Q_LINEAR).__setitem__("dtype", "int3"))),
    ("qformat-scale-zero", "E401_QUANT_PARAMS", False, "a weight scale of 0",
     _edit(lambda p: _values(p, f"{Q_LINEAR}/weight.scale", lambda a: np.where(np.arange(a.size) == 0, 0, a)))),
    ("qformat-scale-negative", "E401_QUANT_PARAMS", False, "an activation scale of -1",
     _edit(lambda p: _values(p, f"{Q_LINEAR}/x.scale", lambda a: -np.ones_like(a)))),
    ("qformat-scale-nan", "E401_QUANT_PARAMS", False, "a KV-cache scale that is NaN",
     _edit(lambda p: _values(p, f"{K_CACHE}/x.scale", lambda a: np.full_like(a, np.nan)))),
    ("qformat-scale-inf", "E401_QUANT_PARAMS", False, "an activation scale that is +inf",
     _edit(lambda p: _values(p, f"{K_LINEAR}/x.scale", lambda a: np.full_like(a, np.inf)))),
    ("qformat-zero-point-out-of-range", "E401_QUANT_PARAMS", False, "an int8 zero point of 300 (stored as I32)",
     _edit(lambda p: _values(p, f"{Q_LINEAR}/x.zero_point", lambda a: np.full_like(a, 300)))),
    ("qformat-zero-point-on-symmetric", "E401_QUANT_PARAMS", False, "a symmetric weight with zero point 1",
     _edit(lambda p: _values(p, f"{Q_LINEAR}/weight.zero_point", lambda a: np.ones_like(a)))),
    ("qformat-zero-point-fractional", "E401_QUANT_PARAMS", False, "a zero point stored as F32 (0.5)",
     _edit(lambda p: _values(p, f"{Q_LINEAR}/x.zero_point", lambda a: a + 0.5, "F32"))),
    ("qformat-scale-shape", "E401_QUANT_PARAMS", False, "a per-channel weight scale one value short",
     _edit(lambda p: (_values(p, f"{Q_LINEAR}/weight.scale", lambda a: a[:-1]),
                      _values(p, f"{Q_LINEAR}/weight.zero_point", lambda a: a[:-1])))),
    ("qformat-rotation-zeros", "E401_QUANT_PARAMS", False, "a rotation factor of zeros (gpt2-mini rotated bundle)",
     _from("gpt2-mini-w8a8kv8-rotated", _edit(lambda p: _values(p, next(
         n for n in sorted(p.tensors) if n.startswith("rotation.") and n.endswith(".b")), np.zeros_like)))),
    ("qformat-int4-over-int8", "E402_QUANT_TENSOR", False, "an int4 spec describing an I8 weight",
     _edit(lambda p: _spec(p, Q_LINEAR).update(dtype="int4", nbits=4, shape=[64, 64]))),
    ("qformat-weight-of-another-linear", "E403_QUANT_NODE", False, "q_proj's node reading k_proj's weight",
     _edit(lambda p: next(n for n in _graph(p)["nodes"] if n.get("qkey") == Q_LINEAR)["args"].__setitem__(
         1, ["tensor", f"{K_LINEAR}/weight"]))),
    ("qformat-kv-layer-huge", "E403_QUANT_NODE", False, "a KV point of layer 2^40",
     _edit(lambda p: _kv_point(p)["args"].__setitem__(1, 2**40))),
    ("qformat-kv-layer-string", "E403_QUANT_NODE", False, "a KV point whose layer is the string '0'",
     _edit(lambda p: _kv_point(p)["args"].__setitem__(1, ["str", "0"]))),
    ("manifest-kv-cache-dtype", "E404_KV_CACHE", False, "manifest.kv_cache.dtype 'int3'",
     _edit(lambda p: p.sections["manifest"]["kv_cache"].__setitem__("dtype", "int3"))),
    ("manifest-kv-cache-heads", "E404_KV_CACHE", False, "manifest.kv_cache.heads 0",
     _edit(lambda p: p.sections["manifest"]["kv_cache"].__setitem__("heads", 0))),
    ("manifest-qlevel-string", "E205_SECTION_SCHEMA", False, "manifest.quant.qlevel 'four'",
     _edit(lambda p: p.sections["manifest"]["quant"].__setitem__("qlevel", "four"))),
    ("manifest-eos-id-string", "E205_SECTION_SCHEMA", False, "an eos token id that is a string",
     _edit(lambda p: p.sections["manifest"]["tokenizer"].__setitem__("eos_token_ids", ["2"]))),
    ("manifest-pad-id-huge", "E205_SECTION_SCHEMA", False, "a pad token id of 2^64-1",
     _edit(lambda p: p.sections["manifest"]["tokenizer"].__setitem__("pad_token_id", 2**64 - 1))),
    # ---- spec 5.4a: the graph type check
    ("graph-int-literal-huge", "E205_SECTION_SCHEMA", False, "an int literal of 2^64-1 (not an int64)",
     _edit(lambda p: _node(p, "aten.unsqueeze.default")["args"].__setitem__(1, 2**64 - 1))),
    ("graph-float-literal-nan", "E205_SECTION_SCHEMA", False, "a NaN float literal",
     _edit(lambda p: _node(p, "aten.pow.Tensor_Scalar")["args"].__setitem__(1, float("nan")))),
    ("graph-device-cuda", "E205_SECTION_SCHEMA", False, "a device other than cpu",
     _edit(lambda p: _node(p, "aten.arange.start_step")["kwargs"].__setitem__("device", ["device", "cuda"]))),
    ("graph-arity", "E305_GRAPH_SIGNATURE", False, "unsqueeze with three positional arguments",
     _edit(lambda p: _node(p, "aten.unsqueeze.default")["args"].append(1))),
    ("graph-arg-kind", "E305_GRAPH_SIGNATURE", False, "unsqueeze's dim given as the string '0'",
     _edit(lambda p: _node(p, "aten.unsqueeze.default")["args"].__setitem__(1, ["str", "0"]))),
    ("graph-unknown-keyword", "E305_GRAPH_SIGNATURE", False, "a keyword argument the op does not have",
     _edit(lambda p: _node(p, "aten.unsqueeze.default")["kwargs"].__setitem__("axis", 1))),
    ("graph-output-not-tensor", "E305_GRAPH_SIGNATURE", False, "a graph output that is an int",
     _edit(lambda p: _graph(p, "decode")["outputs"][0].__setitem__("value", 1))),
    ("graph-no-outputs", "E305_GRAPH_SIGNATURE", False, "a graph without outputs",
     _edit(lambda p: _graph(p, "decode").__setitem__("outputs", []))),
    ("graph-dim-range", "E306_GRAPH_SHAPE", False, "sym_size of dim 7 of a rank-4 tensor",
     _edit(lambda p: _node(p, "aten.sym_size.int")["args"].__setitem__(1, 7))),
    ("graph-broadcast", "E306_GRAPH_SHAPE", False, "an add of tensors whose shapes do not broadcast",
     _edit(lambda p: _node(p, "aten.add.Tensor", "prefill", after="aten.linear.default")["args"].__setitem__(
         1, ["tensor", "model.layers.0.input_layernorm.weight"]))),
    ("graph-view-size", "E306_GRAPH_SHAPE", False, "a view to a size that does not fit the tensor",
     _edit(lambda p: _node(p, "aten.view.default", "prefill")["args"][1][1].__setitem__(-1, 7))),
    ("graph-full-huge", "E306_GRAPH_SHAPE", False, "a 16384 x 16384 full (1 GiB, beyond the size limit)",
     _edit(lambda p: _node(p, "aten.full.default")["args"].__setitem__(0, ["list", [16384, 16384]]))),
    ("graph-arange-huge", "E306_GRAPH_SHAPE", False, "an arange of 2^40 elements",
     _edit(lambda p: _node(p, "aten.arange.start_step")["args"].__setitem__(1, 2**40))),
    ("graph-index-range", "E306_GRAPH_SHAPE", False, "mask positions shifted by one: the last indexes past the end",
     _edit(lambda p: next(n for n in _graph(p, "decode")["nodes"]
                          if n["op"] == "aten.add.Tensor" and n["args"][1] == 0)["args"].__setitem__(1, 1))),
    ("entry-prefill-decode-swapped", "E311_ENTRY_CONVENTION", False, "prefill and decode name each other's graph",
     _edit(_swap_entries)),
    ("entry-output-dtype", "E311_ENTRY_CONVENTION", False, "an entry point declaring int64 logits",
     _edit(lambda p: p.sections["manifest"]["entry_points"]["decode"]["outputs"][0].__setitem__("dtype", "int64"))),
    # ---- spec 5.6.1: the chat template (a tokenizer section added to the base)
    ("chat-template-syntax", "E205_SECTION_SCHEMA", False, "a chat template of an unknown syntax",
     _edit(lambda p: _with_chat_template(p, syntax="jinja3"))),
    ("chat-template-token-name", "E205_SECTION_SCHEMA", False, "a special token named like a render variable",
     _edit(lambda p: _with_chat_template(p, special_tokens={"messages": "<s>"}))),
    ("chat-template-not-text", "E205_SECTION_SCHEMA", False, "a chat template that is not a string",
     _edit(lambda p: _with_chat_template(p, template=["{{ messages }}"]))),
    ("qformat-head-axis", "E400_QUANT_SPEC", False, "a Q.K^T operand quantized per head along axis 127",
     _edit(lambda p: _spec(p, "model.layers.0.self_attn/bmm0", "b").__setitem__("axis", 127))),
    ("qformat-key-scale-not-source", "E401_QUANT_PARAMS", False,
     "a KV cache's key scales 1 % wider than the copy its Q.K^T reads them with",
     _edit(lambda p: _values(p, f"{K_CACHE}/x.scale", lambda a: a * np.float32(1.01)))),
]


def generate_invalid(out: Path, entries: list[dict[str, Any]]) -> None:
    global ORIGINAL
    base = out / "valid" / f"{BASE}.mcq"
    ORIGINAL = Parts(base)
    assert ORIGINAL.build() == base.read_bytes(), "Parts must rebuild the base bundle byte for byte"
    folder = out / "invalid"
    folder.mkdir(parents=True, exist_ok=True)
    seen = set()
    for n, (slug, code, verify, description, craft) in enumerate(CASES, 1):
        assert slug not in seen, slug
        seen.add(slug)
        path = folder / f"{n:03d}-{slug}.mcq"
        path.write_bytes(craft(Parts(base)))
        got = _code_of(path, verify=True)
        assert got == code, f"{path.name}: expected {code}, got {got}"
        if not verify:  # must fail the same way without verify
            assert _code_of(path, verify=False) == code, path.name
        else:  # only verify may catch it
            assert _code_of(path, verify=False) is None, path.name
        entries.append({"name": slug, "file": path.relative_to(out).as_posix(), "sha256": sha256_file(path),
                        "expected_code": code, "requires_verify": verify, "description": description})
    print(f"invalid {len(CASES)} files, {len({c[1] for c in CASES})} distinct codes")


def _code_of(path: Path, verify: bool) -> str | None:
    try:
        mcq_format.validate(path, verify=verify)
    except mcq_format.McqFormatError as exc:
        return exc.code
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only-invalid", action="store_true",
                        help="keep the valid bundles in --out, regenerate the invalid files")
    args = parser.parse_args(argv)
    out: Path = args.out
    valid: list[dict[str, Any]] = []
    if args.only_invalid:
        valid = json.loads((out / "manifest.json").read_text())["valid"]
    else:
        generate_valid(out, valid)
    invalid: list[dict[str, Any]] = []
    write_manifest(out, valid, invalid)  # so that --only-invalid works even if crafting fails
    generate_invalid(out, invalid)
    write_manifest(out, valid, invalid)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: {total:,d} bytes")
    return 0


# spec Q.1a: how outputs compare across machines (runner.py applies it)
TOLERANCE = {
    "rule": "spec Q.1a", "integer": "equal, or one step away (a flip)",
    "rounding": 2.0 ** -16, "flip": 2.0 ** -5, "int_flips": 0.125, "float_flips": 0.5,
    "note": "float: |actual - expected| <= rounding * (max|expected| + |expected|) is equal within "
            "rounding; in a quantized bundle an element one step away (integer) or within flip * "
            "max|expected| (float) is flip-affected, and at most int_flips of an integer output's "
            "elements (float_flips of a float output's) may be; see README.md",
}


def write_manifest(out: Path, valid: list[dict[str, Any]], invalid: list[dict[str, Any]]) -> None:
    manifest = {
        "format_version": "%d.%d" % C.FORMAT_VERSION,
        "opset_version": C.OPSET_VERSION,
        "generator": "spec/conformance/generate.py",
        "tolerance": TOLERANCE,
        "weight_only_qlevel4": {
            "bundles": [v["name"] for v in valid if v.get("preset") in WEIGHT_ONLY_PRESETS],
            "atol": WEIGHT_ONLY_ATOL, "rtol": WEIGHT_ONLY_RTOL,
            "note": "spec Q.4a: weight-only linears may run on faster kernels at qlevel 4; these "
                    "bundles' qlevel-4 vectors hold the reference outputs (equal to qlevel 2's) and "
                    "compare within this tolerance"},
        "valid": valid,
        "invalid": invalid,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
