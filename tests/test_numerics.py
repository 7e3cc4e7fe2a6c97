"""qlevel-4 integer kernels against a numpy int64 reference, and the rounding/clamp conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime import int_gemm, numerics
from runtime.numerics import QuantParams


def qp(scale, zp, nbits=8, symmetric=False, axis=None, per_head=False) -> QuantParams:
    qmin, qmax = numerics.qrange(nbits, symmetric)
    return QuantParams(torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(zp, dtype=torch.int32),
                       qmin, qmax, axis, per_head)


def test_round_half_away_from_zero():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.49])
    assert numerics.round_half_away_from_zero(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, -0]


def test_qrange_signed_storage():
    assert numerics.qrange(8, symmetric=True) == (-127, 127)
    assert numerics.qrange(8, symmetric=False) == (-128, 127)


def test_quantize_clamps_and_adds_zero_point():
    p = qp(0.5, 3)
    q = numerics.quantize(torch.tensor([0.0, 0.25, -0.25, 1000.0, -1000.0]), p)
    assert q.dtype == torch.int8
    assert q.tolist() == [3, 4, 2, 127, -128]
    assert numerics.dequantize(q, p).tolist() == [0.0, 0.5, -0.5, 62.0, -65.5]


def test_per_head_selects_scale_by_index_modulo_heads():
    # a [batch*heads, n] tensor with 2 heads: rows 0, 2 use scale 1, rows 1, 3 use scale 10
    p = qp([1.0, 10.0], [0, 0], symmetric=True, axis=0, per_head=True)
    x = torch.full((4, 3), 20.0)
    assert numerics.quantize(x, p)[:, 0].tolist() == [20, 2, 20, 2]


def _np_quantize(x, scale, zp, qmin, qmax):
    v = x.astype(np.float32) / np.float32(scale)
    r = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return np.clip(r + zp, qmin, qmax).astype(np.int64)


@pytest.mark.parametrize("zp", [0, -7, 40])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_qlinear_equals_int64_reference(zp, m):
    g = torch.Generator().manual_seed(m * 100 + zp)
    x = torch.randn(m, 48, generator=g) * 3
    wq = torch.randint(-127, 128, (24, 48), generator=g, dtype=torch.int8)
    ws = torch.rand(24, generator=g) * 0.01 + 1e-3
    bias = torch.randn(24, generator=g)
    xs = 0.05
    y = numerics.qlinear(x, wq, qp(ws, torch.zeros(24), symmetric=True, axis=0), bias, qp(xs, zp))
    xq = _np_quantize(x.numpy(), xs, zp, -128, 127)
    acc = (xq - zp) @ wq.numpy().astype(np.int64).T  # exact integer reference
    assert np.abs(acc).max() < 2**31
    ref = acc.astype(np.float32) * (np.float32(xs) * ws.numpy()).astype(np.float32) + bias.numpy()
    assert torch.equal(y, torch.from_numpy(ref.astype(np.float32)))


@pytest.mark.parametrize("query_per_head", [False, True])
def test_qbmm_equals_int64_reference(query_per_head):
    g = torch.Generator().manual_seed(1)
    heads, batch = 3, 2
    a = torch.randn(batch * heads, 5, 16, generator=g)
    b = torch.randn(batch * heads, 16, 7, generator=g)
    a_s, a_z = torch.tensor([0.03, 0.01, 0.02]), torch.tensor([5, -1, 0])
    pa = qp(a_s, a_z, axis=0, per_head=True) if query_per_head else qp(0.03, 5)
    bs = torch.tensor([0.02, 0.05, 0.01])
    bz = torch.tensor([0, 3, -2])
    pb = qp(bs, bz, axis=0, per_head=True)
    y = numerics.qbmm(a, pa, b, pb)
    assert torch.equal(numerics.qbmm(a, pa, b, pb, emulate=True), y)
    head = np.arange(batch * heads) % heads
    if query_per_head:
        qa = np.stack([_np_quantize(a.numpy()[i], a_s[h].item(), a_z[h].item(), -128, 127) - a_z[h].item()
                       for i, h in enumerate(head)])
        sa = a_s.numpy()[head]
    else:
        qa = _np_quantize(a.numpy(), 0.03, 5, -128, 127) - 5
        sa = np.float32(0.03)
    qb = np.stack([_np_quantize(b.numpy()[i], bs[h].item(), bz[h].item(), -128, 127) - bz[h].item()
                   for i, h in enumerate(head)])
    acc = np.einsum("bij,bjk->bik", qa, qb)
    ref = acc.astype(np.float32) * (sa * bs.numpy()[head]).astype(np.float32)[:, None, None]
    assert torch.equal(y, torch.from_numpy(ref.astype(np.float32)))


def test_fake_quantize_is_quantize_then_dequantize():
    p = qp(0.1, -3)
    x = torch.linspace(-20, 20, 101)
    assert torch.equal(numerics.fake_quantize(x, p), numerics.dequantize(numerics.quantize(x, p), p))


def test_qlinear_with_smoothing_equals_int64_reference():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 32, generator=g) * torch.linspace(0.1, 30, 32)  # outlier channels
    smooth = torch.rand(32, generator=g) + 0.5
    wq = torch.randint(-127, 128, (8, 32), generator=g, dtype=torch.int8)
    ws = torch.rand(8, generator=g) * 0.01 + 1e-3
    p = qp(0.2, 4)
    p = QuantParams(p.scale, p.zero_point, p.qmin, p.qmax, smooth=smooth)
    y = numerics.qlinear(x, wq, qp(ws, torch.zeros(8), symmetric=True, axis=0), None, p)
    xs = (x.numpy().astype(np.float32) / smooth.numpy().astype(np.float32)).astype(np.float32)
    xq = _np_quantize(xs, 0.2, 4, -128, 127)
    acc = (xq - 4) @ wq.numpy().astype(np.int64).T
    ref = acc.astype(np.float32) * (np.float32(0.2) * ws.numpy()).astype(np.float32)
    assert torch.equal(y, torch.from_numpy(ref.astype(np.float32)))


def test_qlinear_outlier_channels_take_the_float_path():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 16, generator=g)
    x[:, 3] = 500.0  # an outlier channel
    idx = torch.tensor([3])
    wq = torch.randint(-127, 128, (5, 16), generator=g, dtype=torch.int8)
    wq[:, 3] = 0
    cols = torch.randn(5, 1, generator=g)
    p = qp(0.02, 0)
    p = QuantParams(p.scale, p.zero_point, p.qmin, p.qmax, outliers=idx)
    y = numerics.qlinear(x, wq, qp(torch.full((5,), 0.01), torch.zeros(5), symmetric=True, axis=0), None, p, cols)
    xm = x.clone()
    xm[:, 3] = 0
    xq = _np_quantize(xm.numpy(), 0.02, 0, -128, 127)
    acc = xq @ wq.numpy().astype(np.int64).T
    ref = acc.astype(np.float32) * np.float32(np.float32(0.02) * np.float32(0.01)) + (x[:, 3:4] @ cols.t()).numpy()
    assert np.allclose(y.numpy(), ref, rtol=0, atol=1e-4)
    assert numerics.quantize(x, p)[:, 3].abs().max() == 0



@pytest.mark.parametrize("weight_granularity", ["channel", "tensor"])
@pytest.mark.parametrize("symmetric_input", [False, True])
def test_qlinear_granularities_equal_int64_reference(weight_granularity, symmetric_input):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 40, generator=g) * 4  # a 3-D input: leading dims are flattened
    wq = torch.randint(-127, 128, (10, 40), generator=g, dtype=torch.int8)
    if weight_granularity == "channel":
        ws = torch.rand(10, generator=g) * 0.02 + 1e-3
        wqp = qp(ws, torch.zeros(10), symmetric=True, axis=0)
        ws_np = ws.numpy()
    else:
        wqp = qp(0.004, 0, symmetric=True)
        ws_np = np.full(10, 0.004, dtype=np.float32)
    zp = 0 if symmetric_input else 17
    lo, hi = numerics.qrange(8, symmetric_input)
    y = numerics.qlinear(x, wq, wqp, None, qp(0.07, zp, symmetric=symmetric_input))
    xq = _np_quantize(x.reshape(-1, 40).numpy(), 0.07, zp, lo, hi)
    acc = (xq - zp) @ wq.numpy().astype(np.int64).T
    ref = acc.astype(np.float32) * (np.float32(0.07) * ws_np.astype(np.float32)).astype(np.float32)
    assert torch.equal(y, torch.from_numpy(ref.astype(np.float32)).reshape(2, 3, 10))


def test_emulated_and_integer_kernels_are_bit_identical():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(9, 1536, generator=g) * 6  # long rows: partial sums far above 2^24
    wq = torch.randint(-127, 128, (64, 1536), generator=g, dtype=torch.int8)
    wqp = qp(torch.rand(64, generator=g) * 0.01 + 1e-4, torch.zeros(64), symmetric=True, axis=0)
    xqp = qp(0.05, -20)
    assert torch.equal(numerics.qlinear(x, wq, wqp, None, xqp, emulate=True),
                       numerics.qlinear(x, wq, wqp, None, xqp, emulate=False))
    a, b = torch.randn(6, 5, 64, generator=g), torch.randn(6, 64, 7, generator=g)
    pa, pb = qp(0.02, 3), qp(torch.tensor([0.03, 0.05, 0.04]), torch.tensor([1, -2, 0]), axis=0, per_head=True)
    assert torch.equal(numerics.qbmm(a, pa, b, pb, emulate=True), numerics.qbmm(a, pa, b, pb))


def test_prepared_per_tensor_quantize_equals_quantize_at_ties_and_edges():
    """qlinear's per-tensor input path (trunc(v + copysign(0.5, v)), python scalars) is the spec's
    round-half-away-from-zero, bit for bit, including exact .5 ties, -0.0 and values clamped."""
    from runtime.numerics import _quantize_per_tensor, prepare_qlinear

    scale = 0.25
    ties = torch.tensor([-2.625, -0.375, -0.125, -0.0, 0.0, 0.125, 0.375, 2.625, 1e9, -1e9, 31.875, -32.125])
    x = torch.cat([ties, torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 20])
    for zp in (0, 5, -7):
        xqp = QuantParams(torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), -128, 127)
        wqp = QuantParams(torch.ones(3), torch.zeros(3, dtype=torch.int32), -127, 127, axis=0)
        p = prepare_qlinear(torch.ones(3, x.numel(), dtype=torch.int8), wqp, xqp)
        assert p.per_tensor_input
        assert torch.equal(_quantize_per_tensor(x, p), numerics.quantize(x, xqp))
    # smoothing and outlier channels (a [rows, 64] input): the same path, the same integers
    x = x[: 64 * 64].reshape(64, 64)
    smooth = torch.rand(64, generator=torch.Generator().manual_seed(1)) + 0.5
    for outliers in (None, torch.tensor([3, 17])):
        xqp = QuantParams(torch.tensor(scale), torch.tensor(-3, dtype=torch.int32), -128, 127, smooth=smooth,
                          outliers=outliers)
        wqp = QuantParams(torch.ones(3), torch.zeros(3, dtype=torch.int32), -127, 127, axis=0)
        p = prepare_qlinear(torch.ones(3, 64, dtype=torch.int8), wqp, xqp)
        assert p.per_tensor_input
        assert torch.equal(_quantize_per_tensor(x, p), numerics.quantize(x, xqp))


def test_prepared_linear_precomputes_the_zero_point_correction():
    from runtime.numerics import prepare_qlinear

    w = torch.tensor([[1, -2, 3], [127, 127, -127]], dtype=torch.int8)
    wqp = QuantParams(torch.tensor([0.5, 0.25]), torch.zeros(2, dtype=torch.int32), -127, 127, axis=0)
    xqp = QuantParams(torch.tensor(0.1), torch.tensor(-3, dtype=torch.int32), -128, 127)
    p = prepare_qlinear(w, wqp, xqp)
    assert p.zp_correction.tolist() == [-3 * 2, -3 * 127]
    assert torch.equal(p.out_scale, (torch.tensor(0.1) * torch.tensor([0.5, 0.25])).to(torch.float32))


@pytest.mark.parametrize("k,precision", [(256, "highest"), (256, "medium"), (300, "highest")])
def test_qbmm_on_float32_gemm_stays_exact_at_the_largest_sums(k, precision):
    """Q.K^T runs as a float32 GEMM of the centered integers when every partial sum stays below
    2^24 (exact in any order): extreme operands (|q - zp| = 255 everywhere) at head_dim 256 reach
    16.6e6; head_dim 300 and reduced-precision float32 matmuls take the int32 kernel instead."""
    pa, pb = qp(0.5, 127), qp(0.25, -128)  # centered ranges [-255, 0] and [0, 255]
    a = torch.full((2, 3, k), -1000.0)  # quantizes to -128: q - zp = -255
    b = torch.full((2, k, 4), 1000.0)  # quantizes to 127: q - zp = 255
    a[1, 0, : k // 2] = 1000.0  # a row of mixed signs: exact cancellation in the middle
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        y = numerics.qbmm(a, pa, b, pb)
    finally:
        torch.set_float32_matmul_precision(previous)
    qa = _np_quantize(a.numpy(), 0.5, 127, -128, 127) - 127
    qb = _np_quantize(b.numpy(), 0.25, -128, -128, 127) + 128
    acc = np.einsum("bij,bjk->bik", qa, qb)
    assert np.abs(acc).max() == k * 255 * 255
    ref = acc.astype(np.float32) * np.float32(0.5 * 0.25)
    assert torch.equal(y, torch.from_numpy(ref.astype(np.float32)))


def _edge_values(n: int, seed: int) -> torch.Tensor:
    """Exact .5 ties at scale 0.25, signed zeros, values far outside the grid, then noise."""
    ties = torch.tensor([-2.625, -0.375, -0.125, -0.0, 0.0, 0.125, 0.375, 2.625, 1e9, -1e9, 31.875, -32.125])
    return torch.cat([ties, torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 20])


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t


@pytest.mark.parametrize("layout", ["tensor", "channel", "head"])
@pytest.mark.parametrize("zp", [0, 5])
def test_prepared_quantizer_equals_quantize_and_dequantize_bit_for_bit(layout, zp):
    from runtime import prepared

    x = _edge_values(6 * 8 * 31 - 12, 3).reshape(6, 8, 31)  # [batch * heads, rows, cols]
    scales = torch.tensor([0.25, 0.5, 0.125])
    zps = torch.tensor([zp, -zp, 2 * zp], dtype=torch.int32)
    spec = {"tensor": QuantParams(torch.tensor(0.25), torch.tensor(zp, dtype=torch.int32), -128, 127),
            "channel": QuantParams(torch.rand(31) + 0.1, torch.full((31,), zp, dtype=torch.int32), -128, 127, axis=-1),
            "head": QuantParams(scales, zps, -128, 127, axis=0, per_head=True)}[layout]
    quantizer = prepared.Quantizer(spec)
    for _ in range(2):  # the second call reads the parameters made at the first
        q = quantizer.quantize(x)
        assert q.dtype == torch.int8 and torch.equal(q, numerics.quantize(x, spec))
        assert torch.equal(_bits(quantizer.dequantize(q)), _bits(numerics.dequantize(q, spec)))
        centered = numerics._centered(numerics.quantize(x, spec), spec).to(torch.float32)
        assert torch.equal(_bits(quantizer.centered(x)), _bits(centered))  # no -0.0 either


@pytest.mark.parametrize("query_per_head", [False, True])
def test_prepared_int_bmm_equals_qbmm_bit_for_bit(query_per_head):
    from runtime import prepared

    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 1, 64, generator=g) * 3, torch.randn(6, 64, 37, generator=g) * 3
    pa = QuantParams(torch.tensor([0.03, 0.01, 0.02]), torch.tensor([5, -1, 0], dtype=torch.int32), -128, 127,
                     axis=0, per_head=True) if query_per_head else \
        QuantParams(torch.tensor(0.03), torch.tensor(5, dtype=torch.int32), -128, 127)
    pb = QuantParams(torch.tensor([0.02, 0.05, 0.01]), torch.tensor([0, 3, -2], dtype=torch.int32), -128, 127,
                     axis=0, per_head=True)
    fast = prepared.IntBmm(pa, pb, numerics.centered_span(pa, pb))
    for _ in range(2):
        assert torch.equal(_bits(fast(a, b)), _bits(numerics.qbmm(a, pa, b, pb)))
    assert torch.equal(_bits(fast(a, b)), _bits(numerics.qbmm(a, pa, b, pb, emulate=True)))


def test_prepared_round_half_away_from_zero_equals_numerics_for_every_float32_pattern_tried():
    from runtime import prepared

    g = torch.Generator().manual_seed(5)
    bits = torch.randint(-2**31, 2**31 - 1, (1 << 20,), generator=g, dtype=torch.int64).to(torch.int32)
    v = torch.cat([bits.view(torch.float32), torch.tensor([0.49999997, -0.49999997, 0.5, -0.5, 8388607.5])])
    want, got = numerics.round_half_away_from_zero(v), prepared.round_half_away_from_zero(v)
    same = (want == got) | (want.isnan() & got.isnan())
    assert bool(same.all())


def test_prepared_forms_keep_no_values_of_a_compiler_trace():
    """Traced first (fake tensors, as runtime.compiled traces), then run: the real parameters."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from runtime import prepared

    spec = QuantParams(torch.tensor([0.25, 0.5]), torch.tensor([3, -1], dtype=torch.int32), -128, 127,
                       axis=0, per_head=True)
    quantizer, bmm = prepared.Quantizer(spec), prepared.IntBmm(spec, spec, numerics.centered_span(spec, spec))
    x, b = torch.randn(4, 1, 16) * 9, torch.randn(4, 16, 5) * 9
    make_fx(lambda t: quantizer.dequantize(quantizer.quantize(t)), tracing_mode="symbolic", _allow_non_fake_inputs=True)(x)
    make_fx(lambda t, u: bmm(t, u), tracing_mode="symbolic", _allow_non_fake_inputs=True)(x, b)
    assert torch.equal(quantizer.quantize(x), numerics.quantize(x, spec))
    assert torch.equal(bmm(x, b), numerics.qbmm(x, spec, b, spec))


@pytest.mark.parametrize("m,k,n", [(1, 576, 1536), (3, 1537, 7), (9, 1024, 33), (1, 5, 1), (4, 513, 64)])
def test_int8_gemm_without_int_mm_equals_int64_reference(m, k, n):
    """The exact fallback for CPUs whose `_int_mm` saturates: float32 GEMMs over blocks of input
    channels, at the extreme values too (-128 x -128 everywhere: the largest partial sums)."""
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = -128, -128
    got = int_gemm.int8_matmul_by_float32_blocks(a, b)
    assert got.dtype == torch.int32
    assert np.array_equal(got.numpy(), a.numpy().astype(np.int64) @ b.numpy().astype(np.int64))


def _saturating_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What oneDNN's int8 GEMM computes without VNNI: s8 activations shifted to u8, pairs of u8 x s8
    products summed in saturating int16 (`vpmaddubsw`), the shift's compensation subtracted."""
    u = a.to(torch.int32) + 128
    prod = u[:, :, None] * b.to(torch.int32)[None]  # [m, k, n]
    if prod.shape[1] % 2:
        prod = torch.nn.functional.pad(prod, (0, 0, 0, 1))
    pairs = (prod[:, 0::2] + prod[:, 1::2]).clamp(-32768, 32767)
    return (pairs.sum(1) - 128 * b.to(torch.int32).sum(0)).to(torch.int32)


def test_a_saturating_int8_gemm_is_detected_and_not_used(monkeypatch):
    """spec Q.4: int32 accumulation is exact. On a CPU whose `_int_mm` saturates (oneDNN without
    VNNI, e.g. ONEDNN_MAX_CPU_ISA=AVX2), the probe says so and qlevel 4 still equals the int64
    reference and qlevel 3."""
    monkeypatch.setattr(torch, "_int_mm", _saturating_int_mm)
    int_gemm.int8_gemm_is_exact.cache_clear()
    try:
        assert not int_gemm.int8_gemm_is_exact()
        g = torch.Generator().manual_seed(3)
        x = torch.randn(5, 96, generator=g) * 4
        wq = torch.randint(-127, 128, (16, 96), generator=g, dtype=torch.int8)
        wqp, xqp = qp(torch.full((16,), 0.01), torch.zeros(16), symmetric=True, axis=0), qp(0.03, -5)
        y4 = numerics.qlinear(x, wq, wqp, None, xqp)
        y3 = numerics.qlinear(x, wq, wqp, None, xqp, emulate=True)
        assert torch.equal(y4, y3)
        xq = _np_quantize(x.numpy(), 0.03, -5, -128, 127)
        acc = (xq + 5) @ wq.numpy().astype(np.int64).T
        assert np.array_equal(y4.numpy(), (acc.astype(np.float32) * (np.float32(0.03) * np.float32(0.01))))
    finally:
        int_gemm.int8_gemm_is_exact.cache_clear()


def test_the_int8_gemm_probe_passes_an_exact_kernel():
    int_gemm.int8_gemm_is_exact.cache_clear()
    a = torch.full((1, 64), 127, dtype=torch.int8)
    exact = torch.equal(torch._int_mm(a, a.t().contiguous()), torch.full((1, 1), 64 * 127 * 127, dtype=torch.int32))
    assert int_gemm.int8_gemm_is_exact() == exact
