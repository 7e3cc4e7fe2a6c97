"""A bundle's quantization specs (qformat, spec Q.2) as the engine's native objects, made
once at load with numpy: the same parameters `runtime.lower.quant_params` gives the reference
path (float32 scales, int32 zero points, grid, axis, smoothing, outliers, rotation)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from runtime import native

TensorSource = Callable[[str], np.ndarray]

# dtype codes shared with runtime/csrc/tensor.h (DType)
DTYPE_CODES = {"float32": 0, "float64": 1, "int64": 2, "int32": 3, "int8": 4, "uint8": 5, "bool": 6, "int16": 7}
NUMPY_CODES: dict[np.dtype[Any], int] = {
    np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.int64): 2, np.dtype(np.int32): 3,
    np.dtype(np.int8): 4, np.dtype(np.uint8): 5, np.dtype(np.bool_): 6, np.dtype(np.int16): 7}
CODE_NUMPY = {code: dt for dt, code in NUMPY_CODES.items()}


class Unsupported(ValueError):
    """A quantization form the engine has no kernel for (the entry point runs on the reference)."""


def qrange(nbits: int, symmetric: bool) -> tuple[int, int]:
    top = 2 ** (nbits - 1) - 1
    return (-top if symmetric else -top - 1), top


def _int_format(spec: Mapping[str, Any]) -> int:
    if spec.get("dtype") not in ("int8", "int4") or spec.get("nbits") not in (8, 4):
        raise Unsupported(f"quant format {spec.get('dtype')!r} (engine: int8 and int4 specs)")
    return int(spec["nbits"])


def _f32(tensor: TensorSource, name: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor(name), dtype=np.float32).reshape(-1)


class Spec:
    """One int spec's parameters (numpy) and its native object."""

    def __init__(self, spec: Mapping[str, Any], tensor: TensorSource) -> None:
        bits = _int_format(spec)
        gran = spec.get("granularity", "tensor")
        if gran not in ("tensor", "channel", "head", "rotated_tensor"):
            raise Unsupported(f"granularity {gran!r} on an activation")
        self.qmin, self.qmax = qrange(bits, bool(spec.get("symmetric")))
        self.scale = _f32(tensor, spec["scale"])
        self.zero_point = np.ascontiguousarray(tensor(spec["zero_point"]), dtype=np.int32).reshape(-1)
        self.per_head = gran == "head"
        self.smooth = _f32(tensor, spec["smooth"]) if spec.get("smooth") else None
        self.outliers = np.ascontiguousarray(tensor(spec["outliers"]), dtype=np.int64).reshape(-1) \
            if spec.get("outliers") else None
        rot_a = rot_b = None
        if gran == "rotated_tensor":
            names = spec.get("rotation")
            if not isinstance(names, (list, tuple)) or len(names) != 2:
                raise Unsupported("rotated_tensor without two rotation factors")
            a, b = (np.ascontiguousarray(tensor(n), dtype=np.float32) for n in names)
            rot_a = None if np.array_equal(a, np.eye(a.shape[0], dtype=np.float32)) else a
            rot_b = b
        self.rotated = rot_b is not None
        bits_needed = max(self.qmax.bit_length(), (-self.qmin - 1).bit_length()) + 1
        self.storage = DTYPE_CODES["int8"] if bits_needed <= 8 else DTYPE_CODES["int16"]
        per_tensor = gran in ("tensor", "rotated_tensor")  # the engine reads axis -1 as per tensor
        self.native = native.core().quant_spec(
            self.scale, self.zero_point, -1 if per_tensor else self._axis_code(spec), self.per_head, self.qmin,
            self.qmax, self.storage, self.smooth, self.outliers, rot_a, rot_b)
        self.per_tensor = per_tensor
        self.axis = None if per_tensor else int(spec["axis"])

    @staticmethod
    def _axis_code(spec: Mapping[str, Any]) -> int:
        axis = int(spec["axis"])
        if axis < 0:
            # the engine reads axis < 0 as per tensor: negative axes are resolved per call, so
            # they need the rank; every activation axis the toolkit writes is non-negative
            raise Unsupported(f"negative quantization axis {axis} on an activation")
        return axis


def linear_params(q: Mapping[str, Any], weight_name: str, tensor: TensorSource,
                  release: Callable[[str], None] | None = None) -> Any:
    """The native QLinear of a quantized linear (spec Q.4: per-tensor int input, symmetric
    int8 weight per channel or tensor), or Unsupported."""
    xspec, wspec = (q.get("inputs") or {}).get("x"), q.get("weight")
    if xspec is None and wspec is not None:
        return weight_only_params(wspec, weight_name, tensor, release)
    if xspec is None or wspec is None:
        raise Unsupported("a linear with an input spec and no weight spec")
    x = Spec(xspec, tensor)
    if not x.per_tensor:
        raise Unsupported("a linear input quantized per channel")
    if wspec.get("dtype") != "int8" or wspec.get("nbits") != 8 or xspec.get("dtype") != "int8":
        raise Unsupported(f"linear of {xspec.get('dtype')} x {wspec.get('dtype')} (engine: int8 x int8)")
    if wspec.get("granularity", "tensor") not in ("tensor", "channel"):
        raise Unsupported(f"weight granularity {wspec.get('granularity')!r}")
    w = np.ascontiguousarray(tensor(weight_name))
    if w.dtype != np.int8 or w.ndim != 2:
        raise Unsupported(f"weight {weight_name!r}: {w.dtype} {w.shape}")
    if np.any(tensor(wspec["zero_point"])):
        raise Unsupported("asymmetric weight")
    if wspec.get("granularity") == "channel" and int(wspec.get("axis", 0)) not in (0, -2):
        raise Unsupported(f"weight quantized along axis {wspec.get('axis')}")
    n = w.shape[0]
    w_scale = _f32(tensor, wspec["scale"])
    # float32(s_x * s_w): the product the reference makes, in float32
    out_scale = np.ascontiguousarray(np.broadcast_to(x.scale[0] * w_scale, (n,)), dtype=np.float32)
    zp = int(x.zero_point[0])
    correction = None
    if zp:
        # row sums through a buffered int64 reduction (no int64 copy of the weight: 8x its bytes)
        correction = (np.int64(zp) * w.sum(axis=1, dtype=np.int64)).astype(np.int32)  # int32 wrap
    outlier_index = outlier_weight = None
    if q.get("outlier_weight"):
        if x.outliers is None:
            raise Unsupported("outlier weight without outlier channels")
        outlier_index = x.outliers
        # [N, outliers] stored; the kernel reads it as [outliers, N]: transposed once, here
        outlier_weight = np.ascontiguousarray(np.asarray(tensor(q["outlier_weight"]), dtype=np.float32).T)
    packed = native.Int8Weight(w)
    if release is not None:
        release(weight_name)  # the packed copy is what the kernels read
    return native.core().qlinear(x.native, packed.packed, out_scale, correction, outlier_index, outlier_weight)


def weight_only_params(wspec: Mapping[str, Any], weight_name: str, tensor: TensorSource,
                       release: Callable[[str], None] | None = None) -> Any:
    """The native WLinear of a weight-only linear (spec Q.4a): int8 per output channel, per
    tensor or in groups of input channels, or int4 in groups (axis 1, even group size), with
    zero points."""
    if any(wspec.get(k) for k in ("smooth", "outliers", "rotation")):
        raise Unsupported("a weight-only linear with smoothing, outliers or rotation")
    bits, gran = _int_format(wspec), wspec.get("granularity", "tensor")
    w = np.ascontiguousarray(tensor(weight_name))
    if bits == 8:
        if w.dtype != np.int8 or w.ndim != 2 or gran not in ("tensor", "channel", "group") or \
                (gran == "channel" and int(wspec.get("axis", 0)) not in (0, -2)) or \
                (gran == "group" and int(wspec.get("axis", 1)) not in (1, -1)):
            raise Unsupported(f"int8 weight-only {gran} weight {w.dtype} {w.shape}")
        n, k = w.shape
        group = int(wspec.get("group_size") or 0) if gran == "group" else k
        if group < 1:
            raise Unsupported(f"int8 weight in groups of {group}")
    else:
        shape = wspec.get("shape")
        if w.dtype != np.uint8 or w.ndim != 2 or gran != "group" or int(wspec.get("axis", 1)) not in (1, -1) \
                or not isinstance(shape, (list, tuple)) or len(shape) != 2:
            raise Unsupported(f"int4 weight-only {gran} weight {w.dtype} {w.shape}")
        n, k = int(shape[0]), int(shape[1])
        group = int(wspec.get("group_size") or 0)
        if k % 2 or group < 2 or group % 2 or w.shape != (n, k // 2):
            raise Unsupported(f"int4 weight {list(shape)} in groups of {group} (engine: even sizes)")
    groups = -(-k // group)
    scale = np.broadcast_to(_f32(tensor, wspec["scale"]).reshape(-1, 1) if gran != "group" else
                            _f32(tensor, wspec["scale"]).reshape(n, groups), (n, groups))
    zp = np.asarray(tensor(wspec["zero_point"]), dtype=np.int32)
    zp = np.broadcast_to(zp.reshape(-1, 1) if gran != "group" else zp.reshape(n, groups), (n, groups))
    params = native.core().wlinear(w, n, k, bits, group, np.ascontiguousarray(scale, dtype=np.float32),
                                   np.ascontiguousarray(zp, dtype=np.int32))
    if release is not None:
        release(weight_name)  # the packed copy is what the kernel reads
    return params
