"""Quant formats, granularities and kinds (spec Q.2a, Q.3-Q.5), and the semantic check of the
``qformat`` section against the file's tensors and graphs (spec 5.5a).

The schema check (:mod:`mcq_format.schema`) says the qformat is maps of the right types; this
module says it means something a reader can run: every format id known, every scale finite and
positive, every zero point on its grid, every quantized tensor in the storage its spec implies
and of the shape its granularity implies, every quant point's graph node the op its kind names,
reading its own weight. A file that passes both runs with the spec's meaning.

Numpy only. Tensor values read here are the quantization parameters (scales, zero points,
smoothing vectors, outlier indices, rotation factors): a few bytes per output channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn, TypeGuard

import numpy as np

from .errors import KvCacheError, McqFormatError, QuantNodeError, QuantParamsError, QuantSpecError, QuantTensorError


class QuantFormat(NamedTuple):
    """One quant format id (spec Q.2a): how its values are stored and which grid they lie on."""

    id: str
    storage: str  # safetensors dtype of the stored tensor
    bits: int
    kind: str  # "int", "fp8" or "bf16"
    per_byte: int = 1  # values packed into one stored element (int4: two per byte)

    @property
    def has_scale(self) -> bool:
        return self.kind != "bf16"

    def grid(self, symmetric: bool) -> tuple[float, float]:
        """(qmin, qmax) of the stored values (spec Q.2; fp8: its finite range)."""
        if self.kind == "fp8":
            return -448.0, 448.0
        top = 2 ** (self.bits - 1) - 1
        return (-top if symmetric else -top - 1), top


FORMATS: dict[str, QuantFormat] = {
    f.id: f
    for f in (
        QuantFormat("int8", "I8", 8, "int"),
        QuantFormat("int4", "U8", 4, "int", per_byte=2),
        QuantFormat("fp8_e4m3fn", "F8_E4M3", 8, "fp8"),
        QuantFormat("bfloat16", "BF16", 16, "bf16"),
    )
}
UNQUANTIZED = "float32"  # a tensor without a spec (e.g. a float KV cache in manifest.kv_cache)
GRANULARITIES = ("tensor", "channel", "head", "group", "rotated_tensor")
KINDS = ("linear", "bmm", "kv_cache", "embedding")
# the graph op each kind quantizes
KIND_OPS = {"linear": "aten.linear.default", "bmm": "aten.bmm.default", "embedding": "aten.embedding.default",
            "kv_cache": "mcq.kv_point"}
# the inputs a kind may quantize, and the granularities each accepts
INPUT_GRANULARITIES: dict[str, dict[str, tuple[str, ...]]] = {
    "linear": {"x": ("tensor", "rotated_tensor")},
    "bmm": {"a": ("tensor", "head"), "b": ("tensor", "head")},
    "kv_cache": {"x": ("channel",)},
    "embedding": {},
}
WEIGHT_GRANULARITIES = {"linear": ("tensor", "channel", "group"), "embedding": ("channel",)}
WEIGHT_ARG = {"linear": 1, "embedding": 0}  # aten.linear(x, w, b), aten.embedding(w, ids, ...)
SCALE_DTYPES = {"group": ("F16",)}  # every other granularity: F32
ZERO_POINT_DTYPES = ("I8", "I32")
ORTHOGONAL_TOLERANCE = 1e-3  # max |R R^T - I| of a rotation factor (float32 writers reach ~1e-6)
MAX_INDEX = 2**31 - 1  # token ids, layer counts and the like fit an int32


class TensorView(NamedTuple):
    """What the check may learn about the file's tensors."""

    spec: Callable[[str], tuple[str, tuple[int, ...]]]  # name -> (safetensors dtype, shape)
    value: Callable[[str], np.ndarray]  # name -> its values (F16 / F32 / integer dtypes)


class _Where:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, message: str, error: type[McqFormatError]) -> NoReturn:
        raise error(f"qformat: {self.path}: {message}")


def _int(value: object) -> TypeGuard[int]:
    return type(value) is int


def _axis(spec: Mapping[str, Any], rank: int | None, where: _Where) -> int:
    axis = spec.get("axis")
    if not _int(axis) or axis < 0 or (rank is not None and axis >= rank):
        where.fail(f"axis {axis!r} is not an axis of a rank-{rank if rank is not None else '?'} tensor",
                   QuantSpecError)
    return int(axis)


def _check_format(spec: Mapping[str, Any], grans: tuple[str, ...], where: _Where) -> QuantFormat:
    dtype = spec.get("dtype")
    fmt = FORMATS.get(dtype) if isinstance(dtype, str) else None
    if fmt is None:
        where.fail(f"dtype {spec.get('dtype')!r} is not a quant format id ({', '.join(FORMATS)})", QuantSpecError)
    if spec.get("nbits") != fmt.bits or not _int(spec.get("nbits")):
        where.fail(f"nbits {spec.get('nbits')!r} does not match {fmt.id} ({fmt.bits})", QuantSpecError)
    if type(spec.get("symmetric")) is not bool:
        where.fail(f"symmetric {spec.get('symmetric')!r} is not a boolean", QuantSpecError)
    if spec.get("granularity") not in grans:
        where.fail(f"granularity {spec.get('granularity')!r} is not one of {', '.join(grans)} here", QuantSpecError)
    if fmt.kind != "int" and spec.get("granularity") in ("group", "rotated_tensor"):
        where.fail(f"granularity {spec['granularity']} is defined for integer formats only", QuantSpecError)
    return fmt


def _tensor(name: object, view: TensorView, where: _Where, what: str) -> tuple[str, tuple[int, ...]]:
    if not isinstance(name, str):
        where.fail(f"{what} must name a tensor of the file, got {name!r}", QuantSpecError)
    return view.spec(name)


def _expected_param_shape(spec: Mapping[str, Any], weight_shape: tuple[int, ...] | None,
                          channels: int | None, where: _Where) -> tuple[int, ...] | None:
    """The shape the spec's scale and zero point must have (None: any 1-D length)."""
    gran = spec["granularity"]
    if gran in ("tensor", "rotated_tensor"):
        return ()
    rank = len(weight_shape) if weight_shape is not None else None
    axis = _axis(spec, rank, where)
    if gran == "group":
        size = spec.get("group_size")
        if not _int(size) or size < 1:
            where.fail(f"group_size {size!r} is not an int >= 1", QuantSpecError)
        if weight_shape is None:
            where.fail("granularity group is defined for weights only", QuantSpecError)
        shape = list(weight_shape)
        shape[axis] = -(-shape[axis] // size)
        return tuple(shape)
    if weight_shape is not None:
        return (weight_shape[axis],)
    return (channels,) if channels is not None else None


def _check_params(spec: Mapping[str, Any], fmt: QuantFormat, expected: tuple[int, ...] | None,
                  view: TensorView, where: _Where) -> None:
    """Scale finite and > 0, zero point integer, on the grid, 0 where symmetric or fp8."""
    if not fmt.has_scale:
        return
    sdtype, sshape = _tensor(spec.get("scale"), view, where, "scale")
    zdtype, zshape = _tensor(spec.get("zero_point"), view, where, "zero_point")
    allowed = SCALE_DTYPES.get(spec["granularity"], ("F32",))
    if sdtype not in allowed:
        where.fail(f"scale {spec['scale']!r} is {sdtype}, not {' or '.join(allowed)}", QuantParamsError)
    if zdtype not in ZERO_POINT_DTYPES:
        where.fail(f"zero_point {spec['zero_point']!r} is {zdtype}, not I8 or I32", QuantParamsError)
    if expected is None and len(sshape) != 1:
        where.fail(f"scale {spec['scale']!r} has shape {list(sshape)}, not one value per channel", QuantParamsError)
    if expected is not None and sshape != expected:
        where.fail(f"scale {spec['scale']!r} has shape {list(sshape)}, its granularity implies {list(expected)}",
                   QuantParamsError)
    if zshape != sshape:
        where.fail(f"zero_point {spec['zero_point']!r} has shape {list(zshape)}, its scale {list(sshape)}",
                   QuantParamsError)
    scale = view.value(spec["scale"]).astype(np.float32)
    if scale.size and not (np.isfinite(scale).all() and (scale > 0).all()):
        bad = scale[~(np.isfinite(scale) & (scale > 0))].ravel()[0]
        where.fail(f"scale {spec['scale']!r} holds {float(bad)!r}: scales are finite and > 0", QuantParamsError)
    zp = view.value(spec["zero_point"]).astype(np.int64)
    if fmt.kind != "int" or spec["symmetric"]:
        if zp.size and np.any(zp != 0):
            where.fail(f"zero_point {spec['zero_point']!r} is not 0 in a "
                       f"{'symmetric' if fmt.kind == 'int' else fmt.id} spec", QuantParamsError)
    else:
        lo, hi = fmt.grid(False)
        if zp.size and (zp.min() < lo or zp.max() > hi):
            where.fail(f"zero_point {spec['zero_point']!r} holds values outside [{lo:g}, {hi:g}]", QuantParamsError)


def _check_source_params(spec: Mapping[str, Any], source: Mapping[str, Any], view: TensorView, where: _Where) -> None:
    """Q.K^T's key operand reads the int8 KV cache as stored: its scales and zero points are the
    cache's per KV head, repeated for the query heads sharing each one (spec Q.5). Others would
    make the file's two copies disagree and the runtime read the keys with a scale they were not
    stored with."""
    for role in ("scale", "zero_point"):
        _tensor(source.get(role), view, where, f"its source's {role}")
    scale = view.value(source["scale"])
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        return  # the source's own check names that
    for role in ("scale", "zero_point"):
        mine, theirs = view.value(spec[role]).ravel(), view.value(source[role]).ravel()
        if not theirs.size or mine.size % theirs.size or \
                not np.array_equal(mine, np.repeat(theirs, mine.size // theirs.size)):
            where.fail(f"{role} {spec[role]!r} is not its source's {source[role]!r} repeated for the query heads "
                       "that share each KV head (spec Q.5)", QuantParamsError)
    if bool(spec.get("symmetric")) != bool(source.get("symmetric")):
        where.fail("symmetric differs from its source's (spec Q.5)", QuantSpecError)


def _vector(name: object, dtype: str, length: int | None, view: TensorView, where: _Where, what: str) -> np.ndarray:
    tdtype, shape = _tensor(name, view, where, what)
    if tdtype != dtype or len(shape) != 1 or (length is not None and shape[0] != length):
        want = f"[{length}]" if length is not None else "a vector"
        where.fail(f"{what} {name!r} is {tdtype}{list(shape)}, not {dtype} {want}", QuantParamsError)
    return view.value(name)  # type: ignore[arg-type]  # a str: _tensor failed on any other name


def _check_channels(spec: Mapping[str, Any], width: int | None, view: TensorView, where: _Where) -> int | None:
    """smooth / outliers / rotation of a linear input over `width` input channels; the number of
    outlier channels (None without outliers)."""
    if spec.get("smooth") is not None:
        s = _vector(spec["smooth"], "F32", width, view, where, "smooth")
        if not (np.isfinite(s).all() and (s > 0).all()):
            where.fail(f"smooth {spec['smooth']!r} holds values that are not finite and > 0", QuantParamsError)
    n_outliers = None
    if spec.get("outliers") is not None:
        idx = _vector(spec["outliers"], "I64", None, view, where, "outliers").astype(np.int64)
        if idx.size and (idx[0] < 0 or (width is not None and idx[-1] >= width) or np.any(np.diff(idx) <= 0)):
            where.fail(f"outliers {spec['outliers']!r} are not sorted, unique channel indices below {width}",
                       QuantParamsError)
        n_outliers = int(idx.size)
    rotation = spec.get("rotation")
    if spec["granularity"] == "rotated_tensor":
        if not isinstance(rotation, list) or len(rotation) != 2:
            where.fail(f"granularity rotated_tensor needs rotation [A, B], got {rotation!r}", QuantSpecError)
        sizes = []
        for name in rotation:
            tdtype, shape = _tensor(name, view, where, "rotation")
            if tdtype != "F32" or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
                where.fail(f"rotation factor {name!r} is {tdtype}{list(shape)}, not a square F32 matrix",
                           QuantParamsError)
            sizes.append(shape[0])
        if width is not None and sizes[0] * sizes[1] != width:
            where.fail(f"rotation factors {sizes[0]} x {sizes[1]} do not cover {width} input channels",
                       QuantParamsError)
        for name in rotation:  # after the sizes: the work is bounded by the input width
            if not _orthogonal(view.value(name)):
                where.fail(f"rotation factor {name!r} is not orthogonal", QuantParamsError)
    elif rotation is not None:
        where.fail("rotation is defined for granularity rotated_tensor only", QuantSpecError)
    return n_outliers


def _orthogonal(m: np.ndarray) -> bool:
    """|R R^T - I| <= tolerance everywhere: exactly up to order 1024, beyond by R^T R v = v on
    fixed random probes (O(n^2): a factor's order is bounded only by the input width)."""
    m = m.astype(np.float64)
    n = m.shape[0]
    if not np.isfinite(m).all():
        return False
    if n <= 1024:
        return bool(np.abs(m @ m.T - np.eye(n)).max() <= ORTHOGONAL_TOLERANCE)
    probes = np.random.default_rng(n).standard_normal((n, 4)) / np.sqrt(n)
    return bool(np.abs(m.T @ (m @ probes) - probes).max() <= ORTHOGONAL_TOLERANCE)


def _weight(qkey: str, entry: Mapping[str, Any], tensor_name: str, view: TensorView,
            where: _Where) -> tuple[QuantFormat, tuple[int, ...]]:
    """Check a weight spec against the tensor the graph reads; (format, unpacked shape)."""
    kind = entry["kind"]
    spec = entry["weight"]
    fmt = _check_format(spec, WEIGHT_GRANULARITIES[kind], where)
    if kind == "embedding" and (fmt.id != "int8" or spec["symmetric"] is not True or spec.get("axis") != 0):
        where.fail("an embedding table is int8, symmetric, one scale per row (axis 0) (spec Q.3a)", QuantSpecError)
    tdtype, shape = view.spec(tensor_name)
    if tdtype != fmt.storage:
        where.fail(f"weight {tensor_name!r} is stored as {tdtype}; {fmt.id} is stored as {fmt.storage}",
                   QuantTensorError)
    if fmt.per_byte > 1:
        unpacked = spec.get("shape")
        if not isinstance(unpacked, list) or not unpacked or not all(_int(d) and d >= 0 for d in unpacked):
            where.fail(f"an {fmt.id} weight's spec carries its unpacked shape, got {unpacked!r}", QuantSpecError)
        packed = tuple(unpacked[:-1]) + (-(-unpacked[-1] // fmt.per_byte),)
        if shape != packed:
            where.fail(f"weight {tensor_name!r} has shape {list(shape)}; {fmt.id} of shape {unpacked} packs to "
                       f"{list(packed)}", QuantTensorError)
        shape = tuple(unpacked)
    if len(shape) != 2:
        where.fail(f"weight {tensor_name!r} has shape {list(shape)}: a matrix is required", QuantTensorError)
    if fmt.kind == "int" and spec["symmetric"] is False and kind == "linear" and entry["inputs"].get("x"):
        where.fail("a linear with a quantized input has symmetric weights (spec Q.3)", QuantSpecError)
    _check_params(spec, fmt, _expected_param_shape(spec, shape, None, where), view, where)
    return fmt, shape


def _nodes_by_qkey(sections: Mapping[str, Any]) -> dict[str, list[tuple[str, Mapping[str, Any]]]]:
    out: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for name, graph in sorted(sections.items()):
        if name.startswith("graph/"):
            for node in graph["nodes"]:
                if isinstance(node.get("qkey"), str):
                    out.setdefault(node["qkey"], []).append((name, node))
    return out


def check_kv_cache(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """manifest.kv_cache (spec Q.6): positive int sizes and a known dtype; None when absent."""
    kv = manifest.get("kv_cache")
    if kv is None:
        return None
    if not isinstance(kv, dict):
        raise KvCacheError(f"manifest: kv_cache: expected a map, got {type(kv).__name__}")
    for key in ("layers", "heads", "head_dim"):
        if not _int(kv.get(key)) or not 1 <= kv[key] <= MAX_INDEX:
            raise KvCacheError(f"manifest: kv_cache.{key}: {kv.get(key)!r} is not an int in [1, {MAX_INDEX}]")
    if kv.get("dtype") not in (*FORMATS, UNQUANTIZED):
        raise KvCacheError(f"manifest: kv_cache.dtype: {kv.get('dtype')!r} is not one of "
                           f"{', '.join((*FORMATS, UNQUANTIZED))}")
    return kv


def check_qformat_semantics(qformat: Mapping[str, Any], sections: Mapping[str, Any], view: TensorView) -> None:
    """Every entry of a schema-valid qformat against the tensors and graphs it describes."""
    kv = check_kv_cache(sections.get("manifest") or {})
    nodes = qformat["nodes"]
    quant = (sections.get("manifest") or {}).get("quant") or {}
    if nodes and quant.get("qlevel") == 0:
        raise QuantSpecError("manifest: quant.qlevel 0 (the float graph) names a bundle without quantized nodes; "
                             f"this qformat quantizes {len(nodes)}")
    graph_nodes = _nodes_by_qkey(sections)
    for qkey in sorted(nodes):
        entry = nodes[qkey]
        where = _Where(qkey)
        kind = entry.get("kind")
        if kind not in KINDS:
            where.fail(f"kind {kind!r} is not one of {', '.join(KINDS)}", QuantSpecError)
        inputs = entry.get("inputs")
        if not isinstance(inputs, dict):
            where.fail("inputs: a map of the quantized inputs is required ({} for none)", QuantSpecError)
        unknown = sorted(set(inputs) - set(INPUT_GRANULARITIES[kind]))
        if unknown:
            where.fail(f"a {kind} quantizes inputs {sorted(INPUT_GRANULARITIES[kind])}, not {unknown}", QuantSpecError)
        if kind == "kv_cache" and "x" not in inputs:
            where.fail("a kv_cache quant point quantizes its input x (spec Q.5)", QuantSpecError)
        weight = entry.get("weight")
        if kind in ("bmm", "kv_cache") and weight is not None:
            where.fail(f"a {kind} has no weight spec", QuantSpecError)
        if kind == "embedding" and weight is None:
            where.fail("an embedding quant point has a weight spec", QuantSpecError)
        for role, spec in inputs.items():
            if not isinstance(spec, dict):
                _Where(f"{qkey}: inputs.{role}").fail(f"expected a quant spec map, got {spec!r}", QuantSpecError)
        uses = graph_nodes.get(qkey, [])
        width = out_features = None
        weight_name = None
        for graph, node in uses:
            if node["op"] != KIND_OPS[kind]:
                where.fail(f"{graph} node {node['name']!r} is {node['op']}; a {kind} quant point is "
                           f"{KIND_OPS[kind]}", QuantNodeError)
            if weight is not None:
                args = node["args"]
                i = WEIGHT_ARG[kind]
                ref = args[i] if len(args) > i else None
                own = {f"{qkey}/weight"}
                if kind == "embedding" and isinstance(weight.get("shared_with"), str):
                    own.add(f"{weight['shared_with']}/weight")
                if not (isinstance(ref, list) and ref[0] == "tensor" and ref[1] in own):
                    where.fail(f"{graph} node {node['name']!r} reads weight {ref!r}; a quantized {kind} reads "
                               f"{' or '.join(sorted(own))} (spec Q.3)", QuantNodeError)
                if weight_name is not None and ref[1] != weight_name:
                    where.fail(f"{graph} node {node['name']!r} reads {ref[1]!r}, another graph "
                               f"{weight_name!r}", QuantNodeError)
                weight_name = ref[1]
            elif kind == "linear":  # no weight spec: the linear reads a float32 weight as written
                ref = node["args"][1] if len(node["args"]) > 1 else None
                if isinstance(ref, list) and ref[0] == "tensor" and view.spec(ref[1])[0] != "F32":
                    where.fail(f"{graph} node {node['name']!r} reads {ref[1]!r} ({view.spec(ref[1])[0]}) without a "
                               "weight spec: an unquantized weight is F32", QuantTensorError)
            if kind == "kv_cache":
                layer, which = (node["args"] + [None, None, None])[1:3]
                layers = kv["layers"] if kv else MAX_INDEX
                if not _int(layer) or not 0 <= layer < layers or which not in (0, 1) or type(which) is not int:
                    where.fail(f"{graph} node {node['name']!r}: mcq.kv_point(x, layer, which) needs an int layer "
                               f"in [0, {layers}) and which 0 or 1, got {layer!r}, {which!r}", QuantNodeError)
        if weight is not None:
            if weight_name is None:
                weight_name = f"{qkey}/weight"
                if weight.get("shared_with"):
                    weight_name = f"{weight['shared_with']}/weight"
            wformat, wshape = _weight(qkey, entry, weight_name, view, _Where(f"{qkey}: weight"))
            out_features, width = wshape
            if kind == "embedding" and weight.get("smooth") is not None:
                smooth = _vector(weight["smooth"], "F32", width, view, _Where(f"{qkey}: weight"), "smooth")
                if not (np.isfinite(smooth).all() and (smooth > 0).all()):
                    where.fail(f"weight.smooth {weight['smooth']!r} holds values that are not finite and > 0",
                               QuantParamsError)
        for role, spec in sorted(inputs.items()):
            rwhere = _Where(f"{qkey}: inputs.{role}")
            if spec.get("source") is not None:
                if kind != "bmm" or role != "b":
                    rwhere.fail("source is defined for the b operand of a bmm only (spec Q.5)", QuantSpecError)
                src = nodes.get(spec["source"]) if isinstance(spec["source"], str) else None
                if not isinstance(src, dict) or src.get("kind") != "kv_cache":
                    rwhere.fail(f"source {spec['source']!r} is not a kv_cache quant point", QuantSpecError)
                src_x = src.get("inputs", {}).get("x") if isinstance(src.get("inputs"), dict) else None
                if not isinstance(src_x, dict) or src_x.get("dtype") != spec.get("dtype"):
                    rwhere.fail(f"dtype {spec.get('dtype')!r} differs from its source's", QuantSpecError)
            fmt = _check_format(spec, INPUT_GRANULARITIES[kind][role], rwhere)
            channels = None
            if kind == "kv_cache":
                if spec.get("axis") != 1:
                    rwhere.fail(f"axis {spec.get('axis')!r}: the KV cache is quantized per KV head (axis 1)",
                                QuantSpecError)
                channels = kv["heads"] if kv else None
                if kv and kv["dtype"] != fmt.id:
                    rwhere.fail(f"dtype {fmt.id} differs from manifest.kv_cache.dtype {kv['dtype']!r}", KvCacheError)
            if spec["granularity"] == "head" and spec.get("axis") != 0:  # the bmm's batch x heads axis (Q.3)
                rwhere.fail(f"axis {spec.get('axis')!r}: a bmm operand is quantized per head along axis 0",
                            QuantSpecError)
            _check_params(spec, fmt, _expected_param_shape(spec, None, channels, rwhere), view, rwhere)
            if spec.get("source") is not None and fmt.has_scale:
                _check_source_params(spec, nodes[spec["source"]]["inputs"]["x"], view, rwhere)
            if kind == "linear":
                n_outliers = _check_channels(spec, width, view, rwhere) or 0
                ow = entry.get("outlier_weight")
                if (ow is None) != (n_outliers == 0):
                    rwhere.fail("outliers (non-empty) and the entry's outlier_weight come together (spec Q.3)",
                                QuantSpecError)
                if ow is not None:
                    tdtype, shape = _tensor(ow, view, rwhere, "outlier_weight")
                    if tdtype != "F32" or len(shape) != 2 or shape[1] != n_outliers or \
                            (out_features is not None and shape[0] != out_features):
                        rwhere.fail(f"outlier_weight {ow!r} is {tdtype}{list(shape)}, not F32 "
                                    f"[{out_features}, {n_outliers}]", QuantTensorError)
            else:
                for key in ("smooth", "outliers", "rotation"):
                    if spec.get(key) is not None:
                        rwhere.fail(f"{key} is defined for linear inputs only", QuantSpecError)
        if entry.get("outlier_weight") is not None and not (inputs.get("x") or {}).get("outliers"):
            where.fail("outlier_weight without outliers in inputs.x", QuantSpecError)
