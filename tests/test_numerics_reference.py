"""What the runtime executes against the spec's formulas (runtime.reference_numerics): numerics'
fast forms, the prepared quantizers, the exact-GEMM choices, the weight-only kernels and the
native engine's ops, on random shapes and values (ties and clamps included), every granularity
and format. Integers must be equal; floats bit-identical where the spec promises it (Q.1a: the
quantized values and float32(acc) * float32(s_a * s_b) (+ b), so qlevels 3 and 4 too); float
GEMMs (bf16 products, rotations) within float32 rounding, weight-only kernels within Q.4a."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime import int_gemm, numerics, prepared, weight_only
from runtime import reference_numerics as ref
from runtime.reference_numerics import BF16, FP8, INT, QuantParams

SEEDS = range(3)
INT8 = ("int", 8, True), ("int", 8, False)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so -0.0 differs from 0.0 and NaNs compare)."""
    if not t.dtype.is_floating_point:
        return t
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    diff = (_bits(got) != _bits(want)).nonzero()
    assert diff.numel() == 0, f"{len(diff)} of {got.numel()} differ, first at {diff[0].tolist()}: " \
                              f"{got[tuple(diff[0])].item()} vs {want[tuple(diff[0])].item()}"


def _scales(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Random float32 scales, half of them powers of two (on which the values' 1/16 steps tie)."""
    s = torch.rand(shape, generator=g) * 0.2 + 0.01
    power = 2.0 ** -torch.randint(1, 5, shape, generator=g).to(torch.float32)
    return torch.where(torch.rand(shape, generator=g) < 0.5, power, s).to(torch.float32)


def _values(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Normal values, a third on 1/16 steps (exact half steps of power-of-two grids: ties), and a
    few large enough to clamp."""
    x = torch.randn(shape, generator=g) * 3
    steps = torch.round(x * 16) / 16
    pick = torch.rand(shape, generator=g)
    return torch.where(pick < 0.33, steps, torch.where(pick > 0.97, x * 1000, x))


def _orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0].to(torch.float32)


def _spec(gran: str, fmt: tuple[str, int, bool], shape: tuple[int, ...], g: torch.Generator, *,
          smooth: bool = False, outliers: bool = False, axis: int = 0, heads: int = 1, group: int = 0) -> QuantParams:
    """A QuantParams of granularity `gran` for a tensor of `shape`, with random parameters."""
    kind, nbits, symmetric = fmt
    qmin, qmax = ref.qrange(nbits, symmetric) if kind == INT else (-448, 448)
    pshape: tuple[int, ...] = ()
    rotation = None
    if gran == "channel":
        pshape = (shape[axis],)
    elif gran == "head":
        pshape = (heads,)
    elif gran == "group":
        pshape = tuple(-(-n // group) if d == axis else n for d, n in enumerate(shape))
    elif gran == "rotated_tensor":
        b = 4 if shape[-1] % 4 == 0 else 1
        a = shape[-1] // b
        rotation = (_orthogonal(a, g) if a > 1 else None, _orthogonal(b, g))
    scale = _scales(pshape, g)
    zp = torch.zeros(pshape, dtype=torch.int32)
    if kind == INT and not symmetric:
        zp = torch.randint(qmin // 4, qmax // 4 + 1, pshape, generator=g, dtype=torch.int32)
    width = shape[-1]
    return QuantParams(
        scale, zp, qmin, qmax, axis if gran in ("channel", "head", "group") else None, gran == "head",
        smooth=(torch.rand(width, generator=g) * 2 + 0.25) if smooth else None,
        outliers=torch.randperm(width, generator=g)[: max(1, width // 8)].sort().values if outliers else None,
        group_size=group or None, kind=kind, rotation=rotation)


def _size(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _case(name: str, seed: int) -> tuple[torch.Tensor, QuantParams]:
    """A tensor and a spec: `name` is granularity/format[/transforms]."""
    g = torch.Generator().manual_seed(seed * 1000 + sum(map(ord, name)))
    gran, fmt_name, *extra = name.split("/")
    fmt = {"int8": ("int", 8, True), "int8asym": ("int", 8, False), "int4": ("int", 4, False),
           "int4sym": ("int", 4, True), "fp8": (FP8, 8, True), "bf16": (BF16, 16, True)}[fmt_name]
    if gran == "channel":  # a KV cache [batch, kv_heads, seq, head_dim] along axis 1, or a weight along 0
        shape = (_size(g, 1, 2), _size(g, 1, 4), _size(g, 1, 9), _size(g, 1, 16)) if seed % 2 else \
            (_size(g, 1, 40), _size(g, 1, 70))
        spec = _spec(gran, fmt, shape, g, axis=1 if len(shape) == 4 else 0)
    elif gran == "head":  # a bmm operand [batch * heads, rows, cols]
        heads = _size(g, 1, 4)
        shape = (heads * _size(g, 1, 3), _size(g, 1, 7), _size(g, 1, 20))
        spec = _spec(gran, fmt, shape, g, heads=heads)
    elif gran == "group":  # a weight [N, K] in groups along K, the last one often shorter
        shape = (_size(g, 1, 24), _size(g, 1, 150))
        spec = _spec(gran, fmt, shape, g, axis=1, group=int(torch.tensor([4, 8, 32, 64])[seed % 4]))
    else:
        shape = (_size(g, 1, 3), _size(g, 1, 9), 4 * _size(g, 1, 24))
        spec = _spec(gran, fmt, shape, g, smooth="smooth" in extra, outliers="outliers" in extra)
    return _values(shape, g), spec


EXACT_CASES = ["tensor/int8", "tensor/int8asym", "tensor/int4", "tensor/fp8", "tensor/bf16",
               "tensor/int8asym/smooth", "tensor/int8asym/outliers", "tensor/int8/smooth/outliers",
               "tensor/fp8/smooth", "channel/int8", "channel/int8asym", "channel/int4sym", "channel/fp8",
               "head/int8", "head/int8asym", "head/fp8", "group/int4", "group/int4sym", "group/int8asym"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", EXACT_CASES)
def test_quantize_dequantize_equal_the_spec(name, seed):
    x, qp = _case(name, seed)
    q = numerics.quantize(x, qp)
    assert_same(q, ref.quantize(x, qp))
    assert_same(numerics.dequantize(q, qp), ref.dequantize(q, qp))
    assert_same(numerics.fake_quantize(x, qp), ref.fake_quantize(x, qp))
    if prepared.supported(qp):
        fast = prepared.Quantizer(qp)
        assert_same(fast.quantize(x), ref.quantize(x, qp))
        assert_same(fast.dequantize(q), ref.dequantize(q, qp))
        zp = ref.per_element(qp.zero_point, x.shape, qp)
        assert_same(fast.centered(x), (ref.quantize(x, qp).to(torch.int32) - zp).to(torch.float32))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["rotated_tensor/int8", "rotated_tensor/int8asym/smooth/outliers"])
def test_rotated_quantizer_is_the_spec_within_rotation_rounding(name, seed):
    """Q.2 leaves the rotation's float32 reduction order open: its input within rounding, and
    from the same rotated tensor, the same integers."""
    x, qp = _case(name, seed)
    rotated, want = numerics.quantizer_input(x, qp), ref.quantizer_input(x, qp)
    assert torch.allclose(rotated, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    plain = QuantParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    assert_same(numerics.quantize(x, qp), ref.quantize(rotated, plain))


@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_int4_storage_is_the_spec_layout(length):
    g = torch.Generator().manual_seed(length)
    q = torch.randint(-8, 8, (3, length), generator=g, dtype=torch.int8)
    packed = numerics.pack_int4(q)
    assert packed.shape == (3, (length + 1) // 2) and packed.dtype == torch.uint8
    assert_same(numerics.unpack_int4(packed, length), q)
    assert_same(ref.unpack_int4(packed, length), q)
    assert int(packed[0, 0]) == (int(q[0, 0]) & 0xF) | ((int(q[0, 1]) & 0xF) << 4 if length > 1 else 0)


# ------------------------------------------------------------------ integer products (Q.4)
@pytest.mark.parametrize("m,k,n", [(1, 5, 1), (1, 576, 96), (3, 1537, 7), (17, 513, 33)])
def test_exact_int_gemms_are_the_int32_sums(m, k, n):
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = -128, -128  # the largest partial sums
    want = ref.int_product(a, b)
    assert_same(int_gemm.int_matmul(a, b, emulate=False), want)
    assert_same(int_gemm.int_matmul(a, b, emulate=True).to(torch.int32), want)
    assert_same(int_gemm.int8_matmul_by_float32_blocks(a, b), want)
    assert_same(int_gemm.int_matmul(a.to(torch.int32), b.to(torch.int32), emulate=False), want)


def _linear_case(name: str, m: int, seed: int):
    g = torch.Generator().manual_seed(seed * 7919 + m + sum(map(ord, name)))
    wfmt, xfmt, *extra = name.split("/")
    k, n = _size(g, 1, 300), _size(g, 1, 40)
    x = _values((m, k), g)
    formats = {"int8": ("int", 8, True), "int4": ("int", 4, True), "fp8": (FP8, 8, True), "bf16": (BF16, 16, True),
               "asym": ("int", 8, False)}
    gran = "group" if "group" in extra else "tensor" if "tensor" in extra else "channel"
    wqp = _spec(gran, formats[wfmt], (n, k), g, axis=1 if gran == "group" else 0, group=32 if gran == "group" else 0)
    xqp = _spec("tensor", formats[xfmt], (m, k), g, smooth="smooth" in extra, outliers="outliers" in extra)
    wq = ref.quantize(torch.randn(n, k, generator=g), wqp)
    bias = torch.randn(n, generator=g) if seed % 2 else None
    outlier_w = torch.randn(n, len(xqp.outliers), generator=g) if xqp.outliers is not None else None
    return x, wq, wqp, bias, xqp, outlier_w


LINEAR_EXACT = ["int8/asym", "int8/int8", "int8/asym/tensor", "int8/asym/smooth/outliers", "int4/asym",
                "int4/asym/group", "int8/int8/group", "fp8/fp8"]


@pytest.mark.parametrize("m", [1, 6])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", LINEAR_EXACT)
def test_qlinear_is_the_spec_bit_for_bit_at_qlevels_3_and_4(name, seed, m):
    x, wq, wqp, bias, xqp, ow = _linear_case(name, m, seed)
    want = ref.qlinear(x, wq, wqp, bias, xqp, ow)
    assert_same(numerics.qlinear(x, wq, wqp, bias, xqp, ow), want)
    assert_same(numerics.qlinear(x, wq, wqp, bias, xqp, ow, emulate=True), want)
    p = numerics.prepare_qlinear(wq, wqp, xqp)
    assert_same(numerics.qlinear(x, wq, wqp, bias, xqp, ow, prepared=p, xq=numerics.quantize_input(x, p)), want)


@pytest.mark.parametrize("seed", SEEDS)
def test_bf16_qlinear_is_the_spec_within_float32_rounding(seed):
    x, wq, wqp, bias, xqp, ow = _linear_case("bf16/bf16", 5, seed)
    got, want = numerics.qlinear(x, wq, wqp, bias, xqp, ow), ref.qlinear(x, wq, wqp, bias, xqp, ow)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def _bmm_case(fmt: tuple[str, int, bool], per_head: bool, depth: int, seed: int):
    g = torch.Generator().manual_seed(seed * 31 + depth + per_head)
    heads, batch = _size(g, 1, 4), _size(g, 1, 2)
    a, b = _values((batch * heads, _size(g, 1, 6), depth), g), _values((batch * heads, depth, _size(g, 1, 9)), g)
    a_qp = _spec("head" if per_head else "tensor", fmt, tuple(a.shape), g, heads=heads)
    b_qp = _spec("head", fmt, tuple(b.shape), g, heads=heads)
    return a, a_qp, b, b_qp


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("depth", [16, 300])  # 300 * 255 * 255 > 2^24: no float32 shortcut
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("fmt", [*INT8, (FP8, 8, True)], ids=["int8", "int8asym", "fp8"])
def test_qbmm_is_the_spec_bit_for_bit_at_qlevels_3_and_4(fmt, per_head, depth, seed):
    a, a_qp, b, b_qp = _bmm_case(fmt, per_head, depth, seed)
    want = ref.qbmm(a, a_qp, b, b_qp)
    assert_same(numerics.qbmm(a, a_qp, b, b_qp), want)
    assert_same(numerics.qbmm(a, a_qp, b, b_qp, emulate=True), want)
    if prepared.supported(a_qp) and prepared.supported(b_qp):
        assert_same(prepared.IntBmm(a_qp, b_qp, numerics.centered_span(a_qp, b_qp))(a, b), want)


def test_bf16_qbmm_is_the_spec_within_float32_rounding():
    a, a_qp, b, b_qp = _bmm_case((BF16, 16, True), False, 40, 0)
    got, want = numerics.qbmm(a, a_qp, b, b_qp), ref.qbmm(a, a_qp, b, b_qp)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("smooth", [False, True])
def test_embedding_rows_are_the_spec(smooth):
    g = torch.Generator().manual_seed(int(smooth))
    table = _values((50, 24), g)
    qp = _spec("channel", ("int", 8, True), (50, 24), g, axis=0)
    s = torch.rand(24, generator=g) + 0.5 if smooth else None
    ids = torch.randint(0, 50, (3, 7), generator=g)
    tq = ref.quantize(table, qp)
    assert_same(numerics.embedding_rows(tq, qp, ids, s), ref.embedding_rows(tq, qp, ids, s))


def test_a_one_row_int8_gemm_traced_for_the_compiler_is_the_spec():
    """The compiled path's one-row form (explicit strides for Inductor) is chosen by seeing the
    trace's fake tensors, with no module state switched; its values are the spec's."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x, wq, wqp, bias, xqp, ow = _linear_case("int8/asym", 1, 0)
    p = numerics.prepare_qlinear(wq, wqp, xqp)
    f = lambda t: numerics.qlinear(t, wq, wqp, bias, xqp, prepared=p)  # noqa: E731
    traced = make_fx(f, tracing_mode="symbolic", _allow_non_fake_inputs=True)(x)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    if int_gemm.int8_gemm_is_exact():  # else the float32-block fallback runs, traced or not
        assert torch.ops.aten.as_strided.default in targets and torch.ops.aten._int_mm.default in targets
    assert_same(traced(x), ref.qlinear(x, wq, wqp, bias, xqp))
    assert_same(f(x), ref.qlinear(x, wq, wqp, bias, xqp))


# ------------------------------------------------------------------ weight-only kernels (Q.4a)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", [weight_only.BF16_INT8, weight_only.TWO_DIGIT_INT8, weight_only.BF16_INT4])
def test_weight_only_kernels_are_within_the_spec_tolerance(kind, seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 16 * _size(g, 1, 3), 128 * _size(g, 1, 3)  # aten's int4 packing takes N in 16s
    x = _values((_size(g, 1, 5), k), g)
    if kind == weight_only.BF16_INT4:
        qp = _spec("group", ("int", 4, False), (n, k), g, axis=1, group=128)
    else:
        qp = _spec("channel", ("int", 8, True), (n, k), g, axis=0)
    wq = ref.quantize(torch.randn(n, k, generator=g), qp)
    bias = torch.randn(n, generator=g)
    kernel = weight_only.prepare_weight_only(wq, qp, precise=kind == weight_only.TWO_DIGIT_INT8)
    if kernel is None:
        pytest.skip(f"this torch build has no {kind} kernel")
    assert kernel.kind == kind
    err = (weight_only.weight_only_linear(x, kernel, bias) - ref.weight_only_linear(x, wq, qp, bias)).abs()
    assert torch.all(err <= ref.weight_only_tolerance(x, wq, qp))


# ------------------------------------------------------------------ the native engine's ops
def _engine():
    from runtime import native

    if not native.available():
        pytest.skip(f"native core not built: {native.load_error()}")
    from runtime.engine import quant
    return native, quant


def _qformat_spec(qp: QuantParams, tensors: dict[str, np.ndarray], prefix: str) -> dict:
    """qp as a qformat spec (Q.2) whose tensors are put in `tensors`."""
    bits = 8 if qp.qmax == 127 else 4
    gran = "rotated_tensor" if qp.rotation else "head" if qp.per_head else \
        "group" if qp.group_size else "tensor" if qp.axis is None else "channel"
    spec = {"dtype": f"int{bits}", "nbits": bits, "symmetric": qp.qmin == -qp.qmax, "granularity": gran,
            "axis": qp.axis, "scale": f"{prefix}.s", "zero_point": f"{prefix}.z", "group_size": qp.group_size}
    tensors[f"{prefix}.s"], tensors[f"{prefix}.z"] = qp.scale.numpy(), qp.zero_point.numpy()
    for key in ("smooth", "outliers"):
        if getattr(qp, key) is not None:
            tensors[f"{prefix}.{key}"], spec[key] = getattr(qp, key).numpy(), f"{prefix}.{key}"
    if qp.rotation:
        a, b = qp.rotation
        tensors[f"{prefix}.A"] = (torch.eye(1) if a is None else a).numpy()
        tensors[f"{prefix}.B"] = b.numpy()
        spec["rotation"] = [f"{prefix}.A", f"{prefix}.B"]
    return spec


def _run(op: str, args: list, inputs: list[np.ndarray]) -> torch.Tensor:
    native, quant = _engine()
    program = native.core().Program(len(inputs) + 1, list(range(len(inputs))), [len(inputs)])
    program.add(op, "test", len(inputs), args, [])
    (data, code, shape), = program.run([(x, quant.NUMPY_CODES[x.dtype]) for x in inputs])
    return torch.from_numpy(np.frombuffer(data, dtype=quant.CODE_NUMPY[code]).reshape(shape).copy())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["tensor/int8", "tensor/int8asym", "tensor/int8asym/smooth/outliers",
                                  "channel/int8asym", "head/int8asym", "head/int8"])
def test_engine_quantize_and_dequantize_are_the_spec(native_isa, name, seed):
    _, quant = _engine()
    x, qp = _case(name, seed)
    tensors: dict[str, np.ndarray] = {}
    spec = quant.Spec(_qformat_spec(qp, tensors, "x"), tensors.__getitem__)
    q = _run("mcq.quantize", [("ref", 0), ("object", spec.native)], [x.numpy()])
    assert_same(q, ref.quantize(x, qp))
    assert_same(_run("mcq.dequantize", [("ref", 0), ("object", spec.native)], [q.numpy()]), ref.dequantize(q, qp))


@pytest.mark.parametrize("seed", SEEDS)
def test_engine_rotated_quantizer_is_the_spec_up_to_counted_flips(native_isa, seed):
    """Q.2 leaves the rotation's reduction order open (the engine sums in order with FMAs): a
    value may flip to the neighbouring integer (Q.1a), rarely."""
    _, quant = _engine()
    x, qp = _case("rotated_tensor/int8asym/smooth/outliers", seed)
    tensors: dict[str, np.ndarray] = {}
    spec = quant.Spec(_qformat_spec(qp, tensors, "x"), tensors.__getitem__)
    q = _run("mcq.quantize", [("ref", 0), ("object", spec.native)], [x.numpy()])
    steps = (q.to(torch.int32) - ref.quantize(x, qp).to(torch.int32)).abs()
    assert int(steps.max()) <= 1 and int(steps.sum()) <= max(1, x.numel() // 100)


@pytest.mark.parametrize("m", [1, 6])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["int8/asym", "int8/int8/tensor", "int8/asym/smooth/outliers"])
def test_engine_qlinear_is_the_spec_bit_for_bit(native_isa, name, seed, m):
    _, quant = _engine()
    x, wq, wqp, bias, xqp, ow = _linear_case(name, m, seed)
    tensors = {"w": wq.numpy()}
    q = {"kind": "linear", "inputs": {"x": _qformat_spec(xqp, tensors, "x")},
         "weight": _qformat_spec(wqp, tensors, "w")}
    if ow is not None:
        tensors["ow"], q["outlier_weight"] = ow.numpy(), "ow"
    params = quant.linear_params(q, "w", tensors.__getitem__)
    inputs = [x.numpy()] + ([bias.numpy()] if bias is not None else [])
    got = _run("mcq.qlinear", [("ref", 0), ("ref", 1) if bias is not None else ("none",), ("object", params)], inputs)
    want = ref.qlinear(x, wq, wqp, bias, xqp, ow)
    if ow is None:
        assert_same(got, want)
    else:  # the outlier product is a float32 GEMM (Q.1a: within rounding)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("fmt", INT8, ids=["int8", "int8asym"])
def test_engine_qbmm_is_the_spec_bit_for_bit(native_isa, fmt, per_head, seed):
    _, quant = _engine()
    a, a_qp, b, b_qp = _bmm_case(fmt, per_head, 40, seed)
    tensors: dict[str, np.ndarray] = {}
    sa, sb = (quant.Spec(_qformat_spec(p, tensors, n), tensors.__getitem__) for p, n in ((a_qp, "a"), (b_qp, "b")))
    got = _run("mcq.qbmm", [("ref", 0), ("ref", 1), ("object", sa.native), ("object", sb.native)],
               [a.numpy(), b.numpy()])
    assert_same(got, ref.qbmm(a, a_qp, b, b_qp))


def test_engine_int8_products_wrap_as_int32_accumulation(native_isa):
    native, _ = _engine()
    g = torch.Generator().manual_seed(4)
    w = torch.full((3, 140000), -128, dtype=torch.int8)  # 140000 * 2^14 > 2^31: the sums wrap
    x = torch.randint(-128, 128, (2, 140000), generator=g, dtype=torch.int8)
    x[0] = -128
    got = torch.from_numpy(native.Int8Weight(w.numpy()).matmul(x.numpy()))
    assert_same(got, ref.int_product(x, w.T))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fmt", ["int8/channel", "int8/group", "int4/group"])
def test_engine_weight_only_linear_is_within_the_spec_tolerance(native_isa, fmt, seed):
    _, quant = _engine()
    g = torch.Generator().manual_seed(seed)
    bits, gran = fmt.split("/")
    n, k = _size(g, 1, 30), 2 * _size(g, 1, 100)
    x = _values((_size(g, 1, 5), k), g)
    qp = _spec(gran, ("int", 8 if bits == "int8" else 4, False), (n, k), g, axis=0 if gran == "channel" else 1,
               group=16 if gran == "group" else 0)
    wq = ref.quantize(torch.randn(n, k, generator=g), qp)
    tensors = {"w": (numerics.pack_int4(wq) if bits == "int4" else wq).numpy()}
    wspec = _qformat_spec(qp, tensors, "w")
    if bits == "int4":
        wspec["shape"] = [n, k]
    params = quant.weight_only_params(wspec, "w", tensors.__getitem__)
    got = _run("mcq.wlinear", [("ref", 0), ("none",), ("object", params)], [x.numpy()])
    err = (got - ref.weight_only_linear(x, wq, qp, None)).abs()
    assert torch.all(err <= ref.weight_only_tolerance(x, wq, qp))
