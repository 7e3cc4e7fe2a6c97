"""The engine's quantizer and integer linear against numpy on every ISA path this CPU has:
the row quantizer (spec Q.2: x / smooth / s, round half away from zero, + zp, clamp; NaN -> 0)
and the linear's fused epilogue (float32(acc - correction) * scale, then + bias) bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from runtime import native
from runtime.engine.quant import CODE_NUMPY, NUMPY_CODES

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native core not built: {native.load_error()}")

INT8 = 4


def _spec(scale, zp, qmin=-128, qmax=127, smooth=None, outliers=None):
    f32 = lambda v: None if v is None else np.asarray(v, dtype=np.float32)  # noqa: E731
    return native.core().quant_spec(f32([scale]), np.asarray([zp], dtype=np.int32), -1, False, qmin, qmax, INT8,
                                    f32(smooth), None if outliers is None else np.asarray(outliers, dtype=np.int64),
                                    None, None)


def _run(op: str, inputs: list[np.ndarray], objects: list) -> np.ndarray:
    core = native.core()
    n = len(inputs)
    program = core.Program(n + 1, list(range(n)), [n])
    program.add(op, "test", n, [("ref", i) for i in range(n)] + [("object", o) for o in objects], [])
    (data, code, shape), = program.run([(x, NUMPY_CODES[x.dtype]) for x in inputs])
    return np.frombuffer(data, dtype=CODE_NUMPY[code]).reshape(shape)


def _numpy_quantize(x, scale, zp, qmin=-128, qmax=127, smooth=None):
    v = x if smooth is None else (x / np.asarray(smooth, dtype=np.float32)).astype(np.float32)
    t = (v / np.float32(scale)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        g = np.trunc(t + np.copysign(np.float32(0.5), t)).astype(np.float32) + np.float32(zp)
        g = np.where(g < qmin, np.float32(qmin), np.where(g > qmax, np.float32(qmax), g))
    return np.where(np.isnan(g), 0, g).astype(np.int8)


@pytest.mark.parametrize("width", [1, 7, 16, 33, 577])
def test_row_quantizer_equals_numpy_on_ties_clamps_and_nan(native_isa, width):
    rng = np.random.default_rng(width)
    scale, zp = 0.25, 3
    x = (rng.normal(size=(5, width)) * 20).astype(np.float32)
    x[0] = (np.arange(width) - width // 2) * np.float32(0.125)  # exact halves of the grid: ties
    x[1, ::3] = np.array([np.nan, np.inf, -np.inf] * width, dtype=np.float32)[: x[1, ::3].size]
    x[2] *= 1e6  # clamped both ways
    got = _run("mcq.quantize", [x], [_spec(scale, zp)])
    np.testing.assert_array_equal(got, _numpy_quantize(x, scale, zp))
    smooth = rng.uniform(0.3, 3.0, size=width).astype(np.float32)
    got = _run("mcq.quantize", [x], [_spec(scale, zp, smooth=smooth)])
    np.testing.assert_array_equal(got, _numpy_quantize(x, scale, zp, smooth=smooth))
    got = _run("mcq.quantize", [x], [_spec(scale, 0, qmin=-127, qmax=127)])  # a narrowed symmetric grid
    np.testing.assert_array_equal(got, _numpy_quantize(x, scale, 0, qmin=-127))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 48, 576), (3, 17, 5), (9, 33, 63), (40, 100, 130)])
def test_quantized_linear_epilogue_equals_numpy_bit_for_bit(native_isa, m, n, k):
    rng = np.random.default_rng(m * 100 + n + k)
    core = native.core()
    w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    sx, zx = np.float32(0.05), 7
    smooth = rng.uniform(0.5, 2.0, size=k).astype(np.float32)
    x = (rng.normal(size=(m, k)) * 3).astype(np.float32)
    s_w = rng.uniform(0.001, 0.02, size=n).astype(np.float32)
    out_scale = (sx * s_w).astype(np.float32)
    rowsum = w.astype(np.int64).sum(axis=1)
    correction = (zx * rowsum).astype(np.int32)
    bias = rng.normal(size=n).astype(np.float32)
    params = core.qlinear(_spec(sx, zx, smooth=smooth), native.Int8Weight(w).packed, out_scale, correction, None, None)
    got = _run("mcq.qlinear", [x, bias], [params])
    q = _numpy_quantize(x, sx, zx, smooth=smooth).astype(np.int64)
    acc = (q @ w.astype(np.int64).T - correction.astype(np.int64)).astype(np.int32)
    want = (acc.astype(np.float32) * out_scale).astype(np.float32) + bias
    np.testing.assert_array_equal(got, want)
