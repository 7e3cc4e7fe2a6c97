"""Schema checks of the decoded sections (plain Python, no dependencies).

Each check raises a :class:`~mcq_format.errors.McqFormatError` subclass whose
message starts with the section name and the field path, e.g.
``graph/decode: nodes[12].args[0]: unknown tag 'x'``.  Unknown fields are
ignored (forward compatibility within a major version).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from . import constants as C
from .errors import (
    DuplicateNameError,
    EntryPointError,
    GraphOrderError,
    GraphReferenceError,
    McqFormatError,
    MissingSectionError,
    OpNotAllowedError,
    SectionSchemaError,
    TensorReferenceError,
)
from .graph_types import check_graph_types
from .opset import OPSETS
from .quant import TensorView, check_kv_cache, check_qformat_semantics
from .shape_rules import INT64_MAX, INT64_MIN


@dataclass(frozen=True)
class Context:
    """What the checks may look at besides the section itself."""

    tensors: frozenset[str]  # names of the non-section tensors in the file
    sections: Mapping[str, Any]  # every decoded section
    format_version: tuple[int, int]
    opset_version: int
    # the tensors' dtypes, shapes and values, for the semantic checks (mcq_format.quant); None:
    # structure only (a writer's sections checked before any tensor exists)
    view: TensorView | None = None


class _At:
    """A field path inside a section, for error messages."""

    __slots__ = ("section", "path")

    def __init__(self, section: str, path: str = "") -> None:
        self.section = section
        self.path = path

    def key(self, key: str) -> _At:
        return _At(self.section, f"{self.path}.{key}" if self.path else key)

    def idx(self, i: int) -> _At:
        return _At(self.section, f"{self.path}[{i}]")

    def fail(self, message: str, error: type[McqFormatError] = SectionSchemaError) -> NoReturn:
        where = f"{self.section}: {self.path}" if self.path else self.section
        raise error(f"{where}: {message}")


def _kind(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _map(value: object, at: _At) -> dict[str, Any]:
    if not isinstance(value, dict):
        at.fail(f"expected a map, got {_kind(value)}")
    return value


def _list(value: object, at: _At) -> list[Any]:
    if not isinstance(value, list):
        at.fail(f"expected a list, got {_kind(value)}")
    return value


def _str(value: object, at: _At) -> str:
    if not isinstance(value, str):
        at.fail(f"expected a str, got {_kind(value)}")
    return value


def _int(value: object, at: _At) -> int:
    if type(value) is not int:
        at.fail(f"expected an int, got {_kind(value)}")
    return value


def _field(obj: dict[str, Any], key: str, at: _At) -> tuple[Any, _At]:
    if key not in obj:
        at.fail(f"missing field {key!r}")
    return obj[key], at.key(key)


def _const(obj: dict[str, Any], key: str, expected: object, at: _At) -> None:
    """Field ``key`` must equal ``expected`` (same type too: True is not 1)."""
    value, vat = _field(obj, key, at)
    if value != expected or type(value) is not type(expected):
        vat.fail(f"expected {expected!r}, got {value!r}")


def _io_specs(value: object, at: _At, with_dtype: bool = True) -> list[str]:
    """A list of {"name", "dtype", "shape"}; returns the names (unique)."""
    names: list[str] = []
    for i, spec in enumerate(_list(value, at)):
        sat = at.idx(i)
        spec = _map(spec, sat)
        name = _str(_field(spec, "name", sat)[0], sat.key("name"))
        if name in names:
            sat.fail(f"duplicate name {name!r}", DuplicateNameError)
        names.append(name)
        if with_dtype:
            dtype, dat = _field(spec, "dtype", sat)
            if _str(dtype, dat) not in C.GRAPH_DTYPES:
                dat.fail(f"unknown dtype {dtype!r}")
        shape, shat = _field(spec, "shape", sat)
        for j, dim in enumerate(_list(shape, shat)):
            if isinstance(dim, str):
                if not dim:
                    shat.idx(j).fail("symbolic dimension name is empty")
            elif type(dim) is not int or dim < 0:
                shat.idx(j).fail(f"expected a non-negative int or a str, got {dim!r}")
    return names


# ------------------------------------------------------------------- graph
class _GraphChecker:
    def __init__(self, section: str, ctx: Context) -> None:
        self.section = section
        self.ctx = ctx
        self.positions: dict[str, int] = {}  # input -> -1, node -> index

    def value(self, value: object, at: _At, position: int) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                at.fail(f"int literal {value} does not fit an int64")
            return
        if isinstance(value, float):
            if math.isnan(value):  # infinities are legitimate (masks fill with -inf)
                at.fail("float literal NaN")
            return
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            at.fail(f"expected a scalar or a [tag, payload] pair, got {_kind(value)} {value!r:.60}")
        tag, payload = value
        pat = at.idx(1)
        if tag == "ref":
            target = self.positions.get(_str(payload, pat))
            if target is None:
                pat.fail(f"reference to undefined value {payload!r}", GraphReferenceError)
            if target >= position:
                pat.fail(f"reference to {payload!r} before its definition", GraphOrderError)
        elif tag == "tensor":
            if _str(payload, pat) not in self.ctx.tensors:
                pat.fail(f"no tensor {payload!r} in the file", TensorReferenceError)
        elif tag == "list":
            for i, item in enumerate(_list(payload, pat)):
                self.value(item, pat.idx(i), position)
        elif tag == "str":
            _str(payload, pat)
        elif tag in _ENUM_TAGS:
            if _str(payload, pat) not in _ENUM_TAGS[tag]:
                pat.fail(f"unknown {tag} {payload!r}")
        else:
            at.idx(0).fail(f"unknown tag {tag!r}")

    def check(self, graph: object) -> None:
        at = _At(self.section)
        g = _map(graph, at)
        _const(g, "version", C.GRAPH_SCHEMA_VERSION, at)
        _str(_field(g, "name", at)[0], at.key("name"))
        inputs, iat = _field(g, "inputs", at)
        for name in _io_specs(inputs, iat):
            self.positions[name] = -1
        nodes, nat = _field(g, "nodes", at)
        nodes = _list(nodes, nat)
        for j, node in enumerate(nodes):  # first pass: names, so that order errors can be told apart
            jat = nat.idx(j)
            name = _str(_field(_map(node, jat), "name", jat)[0], jat.key("name"))
            if name in self.positions:
                jat.key("name").fail(f"duplicate name {name!r}", DuplicateNameError)
            self.positions[name] = j
        allowed = OPSETS[self.ctx.opset_version]
        for j, node in enumerate(nodes):
            self.node(node, nat.idx(j), j, allowed)
        outputs, oat = _field(g, "outputs", at)
        seen: set[str] = set()
        for k, out in enumerate(_list(outputs, oat)):
            kat = oat.idx(k)
            out = _map(out, kat)
            name = _str(_field(out, "name", kat)[0], kat.key("name"))
            if name in seen:
                kat.key("name").fail(f"duplicate output name {name!r}", DuplicateNameError)
            seen.add(name)
            self.value(_field(out, "value", kat)[0], kat.key("value"), len(nodes))

    def node(self, node: dict[str, Any], at: _At, j: int, allowed: frozenset[str]) -> None:
        op, opat = _field(node, "op", at)
        if not isinstance(op, str) or op not in allowed:
            opat.fail(
                f"node {node['name']!r}: op {op!r} is not in opset v{self.ctx.opset_version}",
                OpNotAllowedError,
            )
        args, aat = _field(node, "args", at)
        for i, arg in enumerate(_list(args, aat)):
            self.value(arg, aat.idx(i), j)
        kwargs, kat = _field(node, "kwargs", at)
        for key, arg in _map(kwargs, kat).items():
            self.value(arg, kat.key(key), j)
        if "qkey" in node:
            # a qkey names a quant point; only the quantized ones appear in the qformat
            _str(node["qkey"], at.key("qkey"))
        if "meta" in node:
            _map(node["meta"], at.key("meta"))


_ENUM_TAGS: dict[str, frozenset[str]] = {
    "device": frozenset({"cpu"}),
    "dtype": C.GRAPH_DTYPES,
    "layout": C.GRAPH_LAYOUTS,
    "memory_format": C.GRAPH_MEMORY_FORMATS,
}


def check_graph(section: str, graph: object, ctx: Context) -> None:
    _GraphChecker(section, ctx).check(graph)


# ---------------------------------------------------------------- manifest
def check_manifest(manifest: object, ctx: Context) -> None:
    at = _At(C.SECTION_MANIFEST)
    m = _map(manifest, at)
    _const(m, "format", C.FORMAT_NAME, at)
    _const(m, "format_version", list(ctx.format_version), at)
    _const(m, "opset_version", ctx.opset_version, at)
    producer, pat = _field(m, "producer", at)
    producer = _map(producer, pat)
    for key in ("name", "version"):
        _str(_field(producer, key, pat)[0], pat.key(key))
    model, mat = _field(m, "model", at)
    model = _map(model, mat)
    _str(_field(model, "family", mat)[0], mat.key("family"))
    _map(_field(model, "config", mat)[0], mat.key("config"))
    quant, qat = _field(m, "quant", at)
    quant = _map(quant, qat)
    if "qlevel" in quant and (type(quant["qlevel"]) is not int or quant["qlevel"] not in C.QLEVELS):
        qat.key("qlevel").fail(f"expected one of {', '.join(map(str, C.QLEVELS))}, got {quant['qlevel']!r}")
    tokenizer, tat = _field(m, "tokenizer", at)
    if tokenizer is not None:
        tokenizer = _map(tokenizer, tat)
        for key in ("bos_token_id", "pad_token_id"):
            if tokenizer.get(key) is not None:
                _token_id(tokenizer[key], tat.key(key))
        if tokenizer.get("eos_token_ids") is not None:
            eat = tat.key("eos_token_ids")
            for i, t in enumerate(_list(tokenizer["eos_token_ids"], eat)):
                _token_id(t, eat.idx(i))
    entries, eat = _field(m, "entry_points", at)
    if not _map(entries, eat):
        eat.fail("a bundle has at least one entry point", EntryPointError)
    for name, entry in _map(entries, eat).items():
        _check_entry_point(name, entry, eat.key(name), ctx)


def _token_id(value: object, at: _At) -> int:
    if type(value) is not int or not 0 <= value <= C.MAX_TOKEN_ID:
        at.fail(f"expected a token id (an int in [0, {C.MAX_TOKEN_ID}]), got {value!r}")
    return value


def _check_entry_point(name: str, entry: object, at: _At, ctx: Context) -> None:
    entry = _map(entry, at)
    graph_name, gat = _field(entry, "graph", at)
    graph_name = _str(graph_name, gat)
    if not graph_name.startswith(C.SECTION_GRAPH_PREFIX):
        gat.fail(f"{graph_name!r} is not a graph section name")
    inputs, iat = _field(entry, "inputs", at)
    entry_inputs = _io_specs(inputs, iat)
    outputs, oat = _field(entry, "outputs", at)
    _io_specs(outputs, oat)
    graph = ctx.sections.get(graph_name)
    if graph is None:
        gat.fail(f"entry point {name!r} names missing section {graph_name!r}", MissingSectionError)
    graph_inputs = [i["name"] for i in graph["inputs"]]  # already schema-checked
    if entry_inputs != graph_inputs:
        missing = [n for n in graph_inputs if n not in entry_inputs]
        extra = [n for n in entry_inputs if n not in graph_inputs]
        iat.fail(
            f"entry point {name!r} inputs {entry_inputs} do not match {graph_name} inputs "
            f"{graph_inputs} (missing {missing}, unknown {extra})",
            EntryPointError,
        )


# ----------------------------------------------------------------- qformat
TENSOR_KEYS = ("scale", "zero_point", "smooth", "outliers", "outlier_weight")
TENSOR_LIST_KEYS = ("rotation",)  # a list of tensor names (the factors of a rotated_tensor spec)


def _check_tensor_names(value: object, at: _At, ctx: Context) -> None:
    """Every 'scale' / 'zero_point' / 'smooth' found in nested maps must name a tensor, and every
    name in a 'rotation' list too."""
    if isinstance(value, dict):
        for key in TENSOR_LIST_KEYS:
            names = value.get(key)
            if isinstance(names, list):
                for i, item in enumerate(names):
                    if not isinstance(item, str):
                        at.key(key).idx(i).fail(f"expected a tensor name, got {_kind(item)}")
                    elif item not in ctx.tensors:
                        at.key(key).idx(i).fail(f"no tensor {item!r} in the file", TensorReferenceError)
            elif key in value and names is not None:
                at.key(key).fail(f"expected a list of tensor names or nil, got {_kind(names)}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_tensor_names(item, at.idx(i), ctx)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in TENSOR_KEYS:
                if isinstance(item, str):
                    if item not in ctx.tensors:
                        at.key(key).fail(f"no tensor {item!r} in the file", TensorReferenceError)
                elif item is not None and not isinstance(item, (int, float)):
                    at.key(key).fail(f"expected a tensor name, a number or nil, got {_kind(item)}")
            else:
                _check_tensor_names(item, at.key(key), ctx)


def check_qformat(qformat: object, ctx: Context) -> None:
    at = _At(C.SECTION_QFORMAT)
    q = _map(qformat, at)
    _const(q, "version", C.QFORMAT_SCHEMA_VERSION, at)
    nodes, nat = _field(q, "nodes", at)
    for qkey, spec in _map(nodes, nat).items():
        sat = nat.key(qkey)
        spec = _map(spec, sat)
        _str(_field(spec, "kind", sat)[0], sat.key("kind"))
        if "inputs" in spec:
            _map(spec["inputs"], sat.key("inputs"))
        if spec.get("weight") is not None:
            _map(spec["weight"], sat.key("weight"))
        _check_tensor_names(spec, sat, ctx)


# --------------------------------------------------------------- tokenizer
def check_tokenizer(tokenizer: object, ctx: Context) -> None:
    at = _At(C.SECTION_TOKENIZER)
    t = _map(tokenizer, at)
    kind, kat = _field(t, "kind", at)
    kind = _str(kind, kat)
    if kind == C.TOKENIZER_KIND_HF:
        _str(_field(t, "json", at)[0], at.key("json"))
    elif kind == C.TOKENIZER_KIND_HF_ZLIB:
        _, dat = _field(t, "zlib", at)
        try:
            tokenizer_json(t)
        except ValueError as e:
            dat.fail(str(e))
    if t.get("chat_template") is not None:
        check_chat_template(t["chat_template"], at.key("chat_template"))


def check_chat_template(value: object, at: _At) -> None:
    """The structure and sizes of a tokenizer section's chat template (spec 5.6.1). Its Jinja syntax
    is not checked here: that needs a template engine, which a reader of the format need not have
    (a renderer reports a template it cannot parse when it first renders it)."""
    chat = _map(value, at)
    _const(chat, "syntax", C.CHAT_TEMPLATE_SYNTAX, at)
    template, tat = _field(chat, "template", at)
    size = len(_str(template, tat).encode("utf-8", "surrogatepass"))
    if size > C.CHAT_TEMPLATE_MAX_BYTES:
        tat.fail(f"{size} bytes, more than the {C.CHAT_TEMPLATE_MAX_BYTES} a chat template may have")
    tokens, kat = _field(chat, "special_tokens", at)
    tokens = _map(tokens, kat)
    if len(tokens) > C.CHAT_SPECIAL_TOKENS_MAX:
        kat.fail(f"{len(tokens)} entries, more than {C.CHAT_SPECIAL_TOKENS_MAX}")
    for name, text in tokens.items():
        nat = kat.key(str(name))
        if not isinstance(name, str) or not C.CHAT_SPECIAL_TOKEN_NAME_RE.fullmatch(name):
            nat.fail(f"a special token's name must match {C.CHAT_SPECIAL_TOKEN_NAME_RE.pattern}, got {name!r}")
        if name in C.CHAT_RENDER_VARIABLES:
            nat.fail(f"{name!r} is a variable the renderer sets; a special token may not take its name")
        size = len(_str(text, nat).encode("utf-8", "surrogatepass"))
        if size > C.CHAT_SPECIAL_TOKEN_MAX_BYTES:
            nat.fail(f"{size} bytes, more than the {C.CHAT_SPECIAL_TOKEN_MAX_BYTES} a special token may have")


def tokenizer_json(section: dict[str, Any]) -> str:
    """The tokenizer.json text of a tokenizer section of either kind (zlib: decompressed under
    TOKENIZER_MAX_JSON_BYTES). ValueError names what is wrong."""
    if section.get("kind") == C.TOKENIZER_KIND_HF:
        return str(section["json"])
    if section.get("kind") != C.TOKENIZER_KIND_HF_ZLIB:
        raise ValueError(f"tokenizer kind {section.get('kind')!r} is not one of "
                         f"{C.TOKENIZER_KIND_HF!r}, {C.TOKENIZER_KIND_HF_ZLIB!r}")
    data = section.get("zlib")
    if not isinstance(data, bytes):
        raise ValueError(f"expected bin (zlib data), got {type(data).__name__}")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, C.TOKENIZER_MAX_JSON_BYTES)
    except zlib.error as e:
        raise ValueError(f"not valid zlib data ({e})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError(f"decompresses to more than {C.TOKENIZER_MAX_JSON_BYTES} bytes, or is truncated")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("decompressed tokenizer document is not UTF-8") from None


# ----------------------------------------------------------- tensor_sha256
def check_tensor_sha256(digests: object, ctx: Context) -> None:
    at = _At(C.SECTION_TENSOR_SHA256)
    d = _map(digests, at)
    for name, digest in d.items():
        if name not in ctx.tensors:
            at.key(name).fail(f"no tensor {name!r} in the file", TensorReferenceError)
        if not isinstance(digest, bytes) or len(digest) != C.SHA256_BYTES:
            at.key(name).fail(f"expected {C.SHA256_BYTES} bytes, got {_kind(digest)}")
    missing = sorted(ctx.tensors - d.keys())
    if missing:
        at.fail(f"no digest for tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")


# -------------------------------------------------------------------- all
def check_sections(ctx: Context) -> None:
    """Check every known section; unknown sections are accepted as they are."""
    simple = {
        C.SECTION_QFORMAT: check_qformat,
        C.SECTION_TOKENIZER: check_tokenizer,
        C.SECTION_TENSOR_SHA256: check_tensor_sha256,
    }
    for name, check in simple.items():
        if name in ctx.sections:
            check(ctx.sections[name], ctx)
    for name, obj in sorted(ctx.sections.items()):
        if name.startswith(C.SECTION_GRAPH_PREFIX):
            check_graph(name, obj, ctx)
    # It relies on the graph sections being valid.
    check_manifest(ctx.sections[C.SECTION_MANIFEST], ctx)
    # Last, the meaning: quantization against the tensors and graphs (spec 5.5a)
    if ctx.view is not None:
        if C.SECTION_QFORMAT in ctx.sections:
            check_qformat_semantics(ctx.sections[C.SECTION_QFORMAT], ctx.sections, ctx.view)
        else:
            check_kv_cache(ctx.sections[C.SECTION_MANIFEST])
        largest = max((math.prod(ctx.view.spec(t)[1]) for t in ctx.tensors), default=0)
        check_graph_types(ctx.sections, ctx.view, largest)
