"""The engine's weight-only linears (runtime/csrc/gemm_wo*.cpp, spec Q.4a) on every ISA path this
CPU has: within Q.4a's bound of the definition x · ((q - zp) · s) on random shapes (int8 per
channel and in groups, int4 groups, shorter last groups, zero points, odd output counts, several
rows), and a row's values the same whether it comes alone (a decode step) or among many (a
prefill)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime import native
from runtime.engine.quant import CODE_NUMPY, NUMPY_CODES

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native core not built: {native.load_error()}")


def _linear(params):
    core = native.core()
    program = core.Program(3, [0, 1], [2])
    program.add("mcq.wlinear", "test", 2, [("ref", 0), ("ref", 1), ("object", params)], [])

    def run(x, bias):
        (data, code, shape), = program.run([(x, NUMPY_CODES[x.dtype]), (bias, NUMPY_CODES[bias.dtype])])
        return np.frombuffer(data, dtype=CODE_NUMPY[code]).reshape(shape)

    return run


def _pack_int4(q: np.ndarray) -> np.ndarray:
    """The spec's int4 storage: element 2i in the low nibble, 2i+1 in the high one."""
    u = (q & 0xF).astype(np.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


@pytest.mark.parametrize("bits,n,k,group,m", [(8, 1, 4, None, 1), (8, 33, 70, None, 3), (8, 100, 576, None, 9),
                                              (8, 20, 96, 32, 2), (8, 9, 70, 32, 5), (8, 16, 7, 3, 1),
                                              (4, 17, 160, 64, 5), (4, 48, 256, 128, 1), (4, 7, 2, 2, 2)])
def test_weight_only_linear_is_within_the_spec_bound(native_isa, bits, n, k, group, m):
    rng = np.random.default_rng(n * 1000 + k + m)
    lo, hi = (-128, 127) if bits == 8 else (-8, 7)
    q = rng.integers(lo, hi + 1, size=(n, k)).astype(np.int8)
    group = k if group is None else group
    groups = -(-k // group)
    scale = rng.uniform(0.001, 0.05, size=(n, groups)).astype(np.float32)
    zp = rng.integers(lo // 4, hi // 4 + 1, size=(n, groups)).astype(np.int32)
    stored = q if bits == 8 else _pack_int4(q)
    params = native.core().wlinear(stored, n, k, bits, group, scale, zp)
    x = (rng.normal(size=(m, k)) * 3).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    got = _linear(params)(x, bias)

    s_full = np.repeat(scale, group, axis=1)[:, :k].astype(np.float64)
    z_full = np.repeat(zp, group, axis=1)[:, :k].astype(np.float64)
    w = ((q - z_full) * s_full).astype(np.float32).astype(np.float64)  # dequantize(w) in float32
    want = x.astype(np.float64) @ w.T + bias
    M = (np.abs(q) + np.abs(z_full)) * s_full
    ax = np.abs(x).astype(np.float64)
    bound = 2.0 ** -7 * ax @ M.T + 2.0 ** -15 * ax.max(axis=1, keepdims=True) * M.sum(axis=1)
    assert got.shape == (m, n) and np.all(np.abs(got - want) <= bound)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())  # float32 sums: far inside it
    for r in range(m):  # a row alone gives the same values as among the others
        np.testing.assert_array_equal(_linear(params)(x[r : r + 1], bias)[0], got[r])


def test_weight_only_linear_refuses_sizes_it_cannot_pack():
    core = native.core()
    one = np.ones((4, 1), np.float32), np.zeros((4, 1), np.int32)
    with pytest.raises(ValueError, match="even"):
        core.wlinear(np.zeros((4, 3), np.uint8), 4, 5, 4, 5, *one)  # int4 with an odd input count
    with pytest.raises(ValueError, match="sizes do not match"):
        core.wlinear(np.zeros((4, 5), np.int8), 4, 6, 8, 6, *one)


def test_weight_only_bundle_on_the_engine_is_the_float32_definition():
    """GPT-2 W8A16 (the conformance bundle): the engine's logits within float32 summation of the
    qlevel-3 reference (the exact float32 linears on the dequantized weights; the reference's own
    qlevel-4 bf16 kernels are ~1e-3 away)."""
    from pathlib import Path

    import torch

    import runtime

    path = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "v1.0" / "valid" / "gpt2-tiny-w8a16.mcq"
    ids = [[3, 17, 5, 9, 22, 41, 7]]
    got, _ = runtime.load(path, engine="native").prefill(np.array(ids))
    want, _ = runtime.load(path, qlevel=3).prefill(torch.tensor(ids))
    want = want.float().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_int8_group_weight_only_bundle_runs_on_the_engine_as_the_float32_definition(tiny_models, tmp_path, name):
    """W8A16 with int8 weights in groups of 32 input channels (a shorter last group where the
    width is not a multiple): planned on the engine's weight-only kernel (no fallback), logits
    within float32 summation of the qlevel-3 reference, greedy tokens equal."""
    import torch

    import mcq
    import runtime

    config = mcq.QuantConfig.from_dict({"preset": "W8A16", "weight_granularity": "group", "weight_group_size": 32})
    q = mcq.quantize(tiny_models(name), config, progress=False)
    specs = [e["weight"] for e in q.sections["qformat"]["nodes"].values() if e["kind"] == "linear"]
    assert specs and all(w["granularity"] == "group" and w["group_size"] == 32 and w["dtype"] == "int8"
                         for w in specs)
    path = tmp_path / "w8g32.mcq"
    q.save(path)
    engine = runtime.load(path, engine="native")
    assert type(engine).__name__ == "EngineModel"
    ids = [[3, 17, 5, 9, 22, 41, 7]]
    got, _ = engine.prefill(np.array(ids))
    want = runtime.load(path, qlevel=3, engine="reference").prefill(torch.tensor(ids))[0].float().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    reference = runtime.load(path, qlevel=3, engine="reference")
    assert engine.generate(ids, max_new_tokens=8, stop_at_eos=False) == \
        reference.generate(ids, max_new_tokens=8, stop_at_eos=False)
