"""What each opset op does to dtypes and shapes: the rules of the graph type check (spec 5.4a).

A rule takes the node's bound arguments (abstract values: :class:`T` for a tensor, Python ints,
floats and bools for scalars, lists, :class:`Tag` for dtype / str / layout / device / memory
format constants) and returns the abstract result, or calls ``fail`` with what does not fit.
The rules follow PyTorch's semantics for the ATen overloads (type promotion included), so that
every graph they accept is one the reference path executes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_INTS = ("uint8", "int8", "int16", "int32", "int64")
_WIDTH = {"bool": 0, "uint8": 8, "int8": 8, "int16": 16, "int32": 32, "int64": 64,
          "float16": 16, "bfloat16": 16, "float32": 32, "float64": 64, "float8_e4m3fn": 8}


class T(NamedTuple):
    """A tensor as the check sees it."""

    dtype: str
    shape: tuple[int, ...]
    value: Any = None  # integer / bool tensors: their numpy value where the check knows it (graph_values)


class Tag(NamedTuple):
    kind: str  # "dtype", "str", "device", "layout", "memory_format"
    value: str


class RuleError(Exception):
    """Raised by a rule; the checker adds where it happened."""


def fail(message: str) -> NoReturn:
    raise RuleError(message)


def is_float(dtype: str) -> bool:
    return dtype in _FLOATS


def is_int(dtype: str) -> bool:
    return dtype in _INTS


def _category(dtype: str) -> int:
    return 0 if dtype == "bool" else 1 if is_int(dtype) else 2


def promote(a: str, b: str) -> str:
    """torch.promote_types for the graph dtypes (float8 promotes with nothing)."""
    if a == b:
        return a
    if "float8_e4m3fn" in (a, b):
        fail(f"no type promotion between {a} and {b}")
    ca, cb = _category(a), _category(b)
    if ca != cb:
        return a if ca > cb else b
    if ca == 1:
        if "uint8" in (a, b):  # uint8 with a signed type: the next wider signed type
            other = b if a == "uint8" else a
            return "int16" if other == "int8" else other
        return a if _WIDTH[a] > _WIDTH[b] else b
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    return a if _WIDTH[a] > _WIDTH[b] else b


def _combine(higher: str | None, lower: str | None) -> str | None:
    """c10's combine_categories: a higher-priority operand's dtype wins within its category."""
    if higher is None:
        return lower
    if lower is None or is_float(higher):
        return higher
    if higher == "bool" or is_float(lower):
        return promote(higher, lower)
    return higher


def result_type(*operands: object) -> str:
    """torch.result_type: dimensioned tensors, then 0-d tensors, then Python scalars."""
    groups: list[str | None] = [None, None, None]
    for x in operands:
        if isinstance(x, T):
            dtype, g = x.dtype, (0 if x.shape else 1)
        elif isinstance(x, bool):
            dtype, g = "bool", 2
        elif isinstance(x, int):
            dtype, g = "int64", 2
        elif isinstance(x, float):
            dtype, g = "float32", 2
        else:
            continue
        prev = groups[g]
        groups[g] = dtype if prev is None else promote(prev, dtype)
    out = _combine(groups[0], _combine(groups[1], groups[2]))
    assert out is not None
    return out


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(-rank, 0):
        sizes = {s[i] for s in shapes if len(s) >= -i} - {1}
        if len(sizes) > 1:
            fail(f"shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def dim(d: int, rank: int, extra: int = 0) -> int:
    """A dim argument wrapped into [0, rank + extra) (extra 1: unsqueeze's insertion point)."""
    n = max(rank + extra, 1)
    if not -n <= d < n:
        fail(f"dim {d} out of range for a rank-{rank} tensor")
    return d % n


def _dims(dims: Sequence[int] | None, rank: int) -> list[int]:
    out = list(range(rank)) if dims is None or len(dims) == 0 else [dim(d, rank) for d in dims]
    if len(set(out)) != len(out):
        fail(f"dims {list(dims or [])} repeat a dim")
    return out


def _tensor_args(*ts: T) -> None:
    for t in ts:
        if t.dtype == "float8_e4m3fn":
            fail("arithmetic on float8_e4m3fn tensors is not defined (cast them first)")


def _floating(t: T) -> str:
    _tensor_args(t)
    return t.dtype if is_float(t.dtype) else "float32"


def _needs_float(t: T, what: str) -> None:
    if not is_float(t.dtype):
        fail(f"{what} takes a floating tensor, got {t.dtype}")


def _same_float(*ts: T) -> str:
    for t in ts:
        _needs_float(t, "a matrix product")
    if len({t.dtype for t in ts}) > 1:
        fail(f"matrix operands of different dtypes: {', '.join(t.dtype for t in ts)}")
    return ts[0].dtype


def _sizes(size: Sequence[int], what: str) -> tuple[int, ...]:
    if any(s < 0 for s in size):
        fail(f"{what} {list(size)} has a negative size")
    return tuple(size)


def _view(a: dict[str, Any], key: str) -> T:
    x: T = a["self"]
    size = list(a[key])
    known = math.prod(s for s in size if s != -1)
    if size.count(-1) > 1 or any(s < -1 for s in size):
        fail(f"view size {size}: at most one -1 and no other negative size")
    n = math.prod(x.shape)
    if -1 in size:
        if known == 0 or n % known:
            fail(f"view size {size} does not fit a tensor of {n} elements")
        size[size.index(-1)] = n // known
    elif known != n:
        fail(f"view size {size} ({known} elements) does not fit a tensor of {n} elements")
    return T(x.dtype, tuple(size))


def _expand(a: dict[str, Any]) -> T:
    x: T = a["self"]
    size = list(a["size"])
    if len(size) < len(x.shape):
        fail(f"expand to {size}: fewer dims than the tensor's {list(x.shape)}")
    lead = len(size) - len(x.shape)
    out = []
    for i, s in enumerate(size):
        old = x.shape[i - lead] if i >= lead else None
        if s == -1 and old is not None:
            s = old
        if s < 0 or (old is not None and old != 1 and old != s):
            fail(f"cannot expand {list(x.shape)} to {size}")
        out.append(s)
    return T(x.dtype, tuple(out))


def _binary(a: dict[str, Any], out_dtype: str | None = None) -> T:
    x, y = a["self"], a["other"]
    shapes = [t.shape for t in (x, y) if isinstance(t, T)]
    _tensor_args(*(t for t in (x, y) if isinstance(t, T)))
    return T(out_dtype or result_type(x, y), broadcast(*shapes) if shapes else ())


def _sub(a: dict[str, Any]) -> T:
    out = _binary(a)
    if out.dtype == "bool":
        fail("subtraction of bool tensors is not defined")
    return out


def _bitwise(a: dict[str, Any]) -> T:
    out = _binary(a)
    if is_float(out.dtype):
        fail(f"bitwise ops take integer or bool tensors, got {out.dtype}")
    return out


def _reduce_shape(x: T, dims: list[int], keepdim: bool) -> tuple[int, ...]:
    return tuple(1 if i in dims else s for i, s in enumerate(x.shape)) if keepdim else \
        tuple(s for i, s in enumerate(x.shape) if i not in dims)


def _sum(a: dict[str, Any]) -> T:
    x: T = a["self"]
    _tensor_args(x)
    dtype = a["dtype"].value if a["dtype"] else (x.dtype if is_float(x.dtype) else "int64")
    return T(dtype, _reduce_shape(x, _dims(a["dim"], len(x.shape)), a["keepdim"]))


def _mean(a: dict[str, Any]) -> T:
    x: T = a["self"]
    dtype = a["dtype"].value if a["dtype"] else x.dtype
    _needs_float(T(dtype, ()), "mean")
    return T(dtype, _reduce_shape(x, _dims(a["dim"], len(x.shape)), a["keepdim"]))


def _matmul(x: T, y: T) -> T:
    dtype = _same_float(x, y)
    if not x.shape or not y.shape:
        fail("matmul of a 0-d tensor")
    xs = (1,) + x.shape if len(x.shape) == 1 else x.shape
    ys = y.shape + (1,) if len(y.shape) == 1 else y.shape
    if xs[-1] != ys[-2]:
        fail(f"matmul of {list(x.shape)} and {list(y.shape)}: inner sizes differ")
    out = broadcast(xs[:-2], ys[:-2]) + (xs[-2], ys[-1])
    if len(x.shape) == 1:
        out = out[:-2] + out[-1:]
    if len(y.shape) == 1:
        out = out[:-1]
    return T(dtype, out)


def _mm(a: dict[str, Any], rank: int) -> T:
    x, y = a["self"], a["mat2"]
    if len(x.shape) != rank or len(y.shape) != rank:
        fail(f"expects rank-{rank} operands, got {list(x.shape)} and {list(y.shape)}")
    if x.shape[:-2] != y.shape[:-2]:
        fail(f"batch sizes differ: {list(x.shape)} and {list(y.shape)}")
    return _matmul(x, y)


def _linear(a: dict[str, Any]) -> T:
    x, w, b = a["input"], a["weight"], a["bias"]
    if len(w.shape) != 2 or not x.shape or x.shape[-1] != w.shape[1]:
        fail(f"linear of an input {list(x.shape)} and a weight {list(w.shape)}")
    out = T(_same_float(x, w, *([b] if b is not None else [])), x.shape[:-1] + w.shape[:1])
    if b is not None and broadcast(out.shape, b.shape) != out.shape:
        fail(f"bias {list(b.shape)} does not fit the output {list(out.shape)}")
    return out


def _addmm(a: dict[str, Any]) -> T:
    m1, m2 = a["mat1"], a["mat2"]
    if len(m1.shape) != 2 or len(m2.shape) != 2:
        fail(f"addmm of {list(m1.shape)} and {list(m2.shape)}: matrices required")
    out = _matmul(m1, m2)
    _same_float(m1, a["self"])
    if broadcast(out.shape, a["self"].shape) != out.shape:
        fail(f"addmm bias {list(a['self'].shape)} does not fit {list(out.shape)}")
    return out


def _layer_norm(a: dict[str, Any]) -> tuple[T, T, T]:
    x, norm = a["input"], tuple(a["normalized_shape"])
    _needs_float(x, "layer norm")
    k = len(norm)
    if not 0 < k <= len(x.shape) or x.shape[-k:] != norm:
        fail(f"normalized shape {list(norm)} is not the trailing shape of {list(x.shape)}")
    for key in ("weight", "bias"):
        if a[key] is not None and (a[key].shape != norm or a[key].dtype != x.dtype):
            fail(f"layer norm {key} {a[key].dtype}{list(a[key].shape)}, expected {x.dtype}{list(norm)}")
    stat = T(x.dtype, x.shape[:-k] + (1,) * k)
    return T(x.dtype, x.shape), stat, stat


def _slice(a: dict[str, Any]) -> T:
    x: T = a["self"]
    d = dim(a["dim"], len(x.shape))
    n, step = x.shape[d], a["step"]
    if step <= 0:
        fail(f"slice step {step} is not positive")
    start, end = a["start"], a["end"]
    start = 0 if start is None else min(max(start + n if start < 0 else start, 0), n)
    end = n if end is None else min(max(end + n if end < 0 else end, 0), n)
    length = max(0, -(-(end - start) // step))
    return T(x.dtype, x.shape[:d] + (length,) + x.shape[d + 1:])


def _select(a: dict[str, Any]) -> T:
    x: T = a["self"]
    d = dim(a["dim"], len(x.shape))
    if not -x.shape[d] <= a["index"] < x.shape[d]:
        fail(f"index {a['index']} out of range for dim {d} of size {x.shape[d]}")
    return T(x.dtype, x.shape[:d] + x.shape[d + 1:])


def _split(a: dict[str, Any]) -> list[T]:
    x: T = a["self"]
    d = dim(a["dim"], len(x.shape))
    sizes = _sizes(a["split_sizes"], "split sizes")
    if sum(sizes) != x.shape[d]:
        fail(f"split sizes {list(sizes)} do not sum to dim {d}'s size {x.shape[d]}")
    return [T(x.dtype, x.shape[:d] + (s,) + x.shape[d + 1:]) for s in sizes]


def _cat(a: dict[str, Any]) -> T:
    ts: list[T] = a["tensors"]
    if not ts:
        fail("cat of no tensors")
    rank = len(ts[0].shape)
    d = dim(a["dim"], rank)
    for t in ts:
        if len(t.shape) != rank or t.shape[:d] + t.shape[d + 1:] != ts[0].shape[:d] + ts[0].shape[d + 1:]:
            fail(f"cat of {', '.join(str(list(t.shape)) for t in ts)} along dim {d}")
    _tensor_args(*ts)
    return T(result_type(*ts), ts[0].shape[:d] + (sum(t.shape[d] for t in ts),) + ts[0].shape[d + 1:])


def _index_tensor(t: T) -> None:
    if t.dtype not in ("int64", "int32"):
        fail(f"index tensors are int64 or int32, got {t.dtype}")


def _index(a: dict[str, Any]) -> T:
    x: T = a["self"]
    idx: list[T | None] = a["indices"]
    if not idx or len(idx) > len(x.shape) or all(i is None for i in idx):
        fail(f"{len(idx)} indices for a rank-{len(x.shape)} tensor")
    used = [k for k, i in enumerate(idx) if i is not None]
    given = [i for i in idx if i is not None]  # idx[k] for k in used
    for i in given:
        _index_tensor(i)
    shape = broadcast(*(i.shape for i in given))
    rest = x.shape[len(idx):]
    if used == list(range(used[0], used[-1] + 1)):  # adjacent: the result replaces them in place
        return T(x.dtype, x.shape[:used[0]] + shape + x.shape[used[-1] + 1:len(idx)] + rest)
    kept = tuple(x.shape[k] for k in range(len(idx)) if idx[k] is None)
    return T(x.dtype, shape + kept + rest)


def _gather(a: dict[str, Any]) -> T:
    x, i = a["self"], a["index"]
    d = dim(a["dim"], len(x.shape))
    if i.dtype != "int64" or len(i.shape) != len(x.shape) or \
            any(i.shape[k] > x.shape[k] for k in range(len(x.shape)) if k != d):
        fail(f"gather index {i.dtype}{list(i.shape)} does not fit {list(x.shape)} along dim {d}")
    return T(x.dtype, i.shape)


def _embedding(a: dict[str, Any]) -> T:
    w, i = a["weight"], a["indices"]
    if len(w.shape) != 2:
        fail(f"embedding table {list(w.shape)} is not a matrix")
    _needs_float(w, "an embedding table")
    _index_tensor(i)
    return T(w.dtype, i.shape + w.shape[1:])


def _arange(a: dict[str, Any]) -> T:
    start, end, step = a.get("start", 0), a["end"], a.get("step", 1)
    if step == 0 or not all(math.isfinite(v) for v in (start, end, step)):
        fail(f"arange({start}, {end}, {step})")
    n = math.ceil((end - start) / step)
    if n < 0:
        fail(f"arange({start}, {end}, {step}): the bounds disagree with the step's sign")
    floats = any(isinstance(v, float) for v in (start, end, step))
    return T(a["dtype"].value if a["dtype"] else ("float32" if floats else "int64"), (n,))


def _full(a: dict[str, Any]) -> T:
    v = a["fill_value"]
    default = "bool" if isinstance(v, bool) else "int64" if isinstance(v, int) else "float32"
    return T(a["dtype"].value if a["dtype"] else default, _sizes(a["size"], "size"))


def _new(a: dict[str, Any]) -> T:
    return T(a["dtype"].value if a["dtype"] else a["self"].dtype, _sizes(a["size"], "size"))


def _where(a: dict[str, Any]) -> T:
    c, x, y = a["condition"], a["self"], a["other"]
    if c.dtype != "bool":
        fail(f"where's condition is bool, got {c.dtype}")
    _tensor_args(x, y)
    return T(result_type(x, y), broadcast(c.shape, x.shape, y.shape))


def _masked_fill(a: dict[str, Any]) -> T:
    x, m = a["self"], a["mask"]
    if m.dtype != "bool":
        fail(f"masked_fill's mask is bool, got {m.dtype}")
    if broadcast(x.shape, m.shape) != x.shape:
        fail(f"mask {list(m.shape)} does not broadcast to {list(x.shape)}")
    if is_int(x.dtype) and isinstance(a["value"], float):
        fail("masked_fill of an integer tensor with a float value")
    return T(x.dtype, x.shape)


def _clamp(a: dict[str, Any]) -> T:
    x: T = a["self"]
    if a["min"] is None and a["max"] is None:
        fail("clamp needs min or max")
    _tensor_args(x)
    return T(result_type(x, *(v for v in (a["min"], a["max"]) if v is not None)), x.shape)


def _pow(a: dict[str, Any]) -> T:
    x, e = a["self"], a["exponent"]
    _tensor_args(x)
    if not is_float(x.dtype) and isinstance(e, int) and e < 0:
        fail("an integer tensor to a negative integer power")
    return T(result_type(x, e), x.shape)


def _permute(a: dict[str, Any]) -> T:
    x: T = a["self"]
    dims = _dims(a["dims"], len(x.shape)) if a["dims"] else []
    if len(dims) != len(x.shape):
        fail(f"permute dims {list(a['dims'])} are not a permutation of a rank-{len(x.shape)} tensor's")
    return T(x.dtype, tuple(x.shape[d] for d in dims))


def _transpose(x: T, d0: int, d1: int) -> T:
    shape = list(x.shape)
    if shape:
        d0, d1 = dim(d0, len(shape)), dim(d1, len(shape))
        shape[d0], shape[d1] = shape[d1], shape[d0]
    return T(x.dtype, tuple(shape))


def _t(a: dict[str, Any]) -> T:
    if len(a["self"].shape) > 2:
        fail(f"t() of a rank-{len(a['self'].shape)} tensor")
    return _transpose(a["self"], 0, -1)


def _squeeze(a: dict[str, Any]) -> T:
    x: T = a["self"]
    if not x.shape:
        dim(a["dim"], 0)
        return x
    d = dim(a["dim"], len(x.shape))
    return T(x.dtype, x.shape[:d] + x.shape[d + 1:]) if x.shape[d] == 1 else x


def _unsqueeze(a: dict[str, Any]) -> T:
    x: T = a["self"]
    d = dim(a["dim"], len(x.shape), extra=1)
    return T(x.dtype, x.shape[:d] + (1,) + x.shape[d:])


def _softmax(a: dict[str, Any]) -> T:
    x: T = a["self"]
    _needs_float(x, "softmax")
    dim(a["dim"], len(x.shape))
    return x


def _unary_float(a: dict[str, Any]) -> T:
    return T(_floating(a["self"]), a["self"].shape)


def _float_only(a: dict[str, Any]) -> T:
    x: T = a["self"]
    _needs_float(x, "this activation")
    return x


def _same(a: dict[str, Any]) -> T:
    x: T = a["self"]
    return x


def _numeric(a: dict[str, Any]) -> T:
    x: T = a["self"]
    _tensor_args(x)
    if x.dtype == "bool":
        fail("this op is not defined on bool tensors")
    return x


def _python(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    def rule(a: dict[str, Any]) -> Any:
        args = [a[k] for k in ("a", "b") if k in a]
        if fn is _floordiv and args[1] == 0:
            fail("floor division by zero")
        out = fn(*args)
        if isinstance(out, int) and not INT64_MIN <= out <= INT64_MAX:
            fail(f"{out} does not fit an int64")
        return out
    return rule


def _floordiv(x: Any, y: Any) -> Any:
    return x // y


def _getitem(a: dict[str, Any]) -> Any:
    seq, i = a["a"], a["b"]
    if not -len(seq) <= i < len(seq):
        fail(f"index {i} out of range for a sequence of {len(seq)}")
    return seq[i]


def _sym_size(a: dict[str, Any]) -> int:
    x: T = a["self"]
    return x.shape[dim(a["dim"], len(x.shape))]


def _to_copy(a: dict[str, Any]) -> T:
    return T(a["dtype"].value if a["dtype"] else a["self"].dtype, a["self"].shape)


def _cumsum(a: dict[str, Any]) -> T:
    x: T = a["self"]
    dim(a["dim"], len(x.shape))
    _tensor_args(x)
    return T(a["dtype"].value if a["dtype"] else (x.dtype if is_float(x.dtype) else "int64"), x.shape)


def _any(a: dict[str, Any]) -> T:
    x: T = a["self"]
    return T("bool", _reduce_shape(x, [dim(a["dim"], len(x.shape))], a["keepdim"]))


def _kv_point(a: dict[str, Any]) -> T:
    x: T = a["x"]
    _needs_float(x, "mcq.kv_point")
    if a["which"] not in (0, 1) or a["layer"] < 0:
        fail(f"mcq.kv_point(x, layer, which): layer >= 0 and which 0 or 1, got {a['layer']}, {a['which']}")
    return x


def _compare(a: dict[str, Any]) -> T:
    return _binary(a, "bool")


RULES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "_operator.add": _python(lambda x, y: x + y),
    "_operator.floordiv": _python(_floordiv),
    "_operator.getitem": _getitem,
    "_operator.mul": _python(lambda x, y: x * y),
    "_operator.neg": _python(lambda x: -x),
    "_operator.sub": _python(lambda x, y: x - y),
    "aten._log_softmax.default": _softmax,
    "aten._softmax.default": _softmax,
    "aten._to_copy.default": _to_copy,
    "aten._unsafe_view.default": lambda a: _view(a, "size"),
    "aten.add.Tensor": _binary,
    "aten.addmm.default": _addmm,
    "aten.alias.default": _same,
    "aten.any.dim": _any,
    "aten.arange.default": _arange,
    "aten.arange.start_step": _arange,
    "aten.bitwise_and.Tensor": _bitwise,
    "aten.bitwise_not.default": lambda a: _bitwise({"self": a["self"], "other": a["self"]}),
    "aten.bitwise_or.Tensor": _bitwise,
    "aten.bmm.default": lambda a: _mm(a, 3),
    "aten.cat.default": _cat,
    "aten.clamp.default": _clamp,
    "aten.clone.default": _same,
    "aten.cos.default": _unary_float,
    "aten.cumsum.default": _cumsum,
    "aten.div.Tensor": lambda a: T(_floating(T(result_type(a["self"], a["other"]), ())), _binary(a).shape),
    "aten.embedding.default": _embedding,
    "aten.eq.Scalar": _compare,
    "aten.erf.default": _unary_float,
    "aten.exp.default": _unary_float,
    "aten.expand.default": _expand,
    "aten.full.default": _full,
    "aten.gather.default": _gather,
    "aten.ge.Scalar": _compare,
    "aten.ge.Tensor": _compare,
    "aten.gelu.default": _float_only,
    "aten.gt.Tensor": _compare,
    "aten.index.Tensor": _index,
    "aten.le.Tensor": _compare,
    "aten.linear.default": _linear,
    "aten.logical_not.default": lambda a: T("bool", a["self"].shape),
    "aten.lt.Tensor": _compare,
    "aten.masked_fill.Scalar": _masked_fill,
    "aten.matmul.default": lambda a: _matmul(a["self"], a["other"]),
    "aten.maximum.default": _binary,
    "aten.mean.dim": _mean,
    "aten.minimum.default": _binary,
    "aten.mm.default": lambda a: _mm(a, 2),
    "aten.mul.Tensor": _binary,
    "aten.native_layer_norm.default": _layer_norm,
    "aten.ne.Scalar": _compare,
    "aten.neg.default": _numeric,
    "aten.new_ones.default": _new,
    "aten.new_zeros.default": _new,
    "aten.permute.default": _permute,
    "aten.pow.Tensor_Scalar": _pow,
    "aten.relu.default": _numeric,
    "aten.reshape.default": lambda a: _view(a, "shape"),
    "aten.rsqrt.default": _unary_float,
    "aten.scalar_tensor.default": lambda a: T(a["dtype"].value if a["dtype"] else "float32", ()),
    "aten.select.int": _select,
    "aten.sigmoid.default": _unary_float,
    "aten.silu.default": _float_only,
    "aten.sin.default": _unary_float,
    "aten.slice.Tensor": _slice,
    "aten.split_with_sizes.default": _split,
    "aten.sqrt.default": _unary_float,
    "aten.squeeze.dim": _squeeze,
    "aten.sub.Tensor": _sub,
    "aten.sum.dim_IntList": _sum,
    "aten.sym_size.int": _sym_size,
    "aten.t.default": _t,
    "aten.tanh.default": _unary_float,
    "aten.transpose.int": lambda a: _transpose(a["self"], a["dim0"], a["dim1"]),
    "aten.unsqueeze.default": _unsqueeze,
    "aten.view.default": lambda a: _view(a, "size"),
    "aten.where.self": _where,
    "mcq.kv_point": _kv_point,
}
