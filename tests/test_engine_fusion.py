"""Fused float chains on the engine (runtime/engine/fuse.py, runtime/csrc/ops_fused.cpp): the
fused programs' outputs equal the unfused programs' bit for bit, and each fused op equals the
chain of numpy float32 operations it stands for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime import native
from runtime.engine import fuse

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native core not built: {native.load_error()}")

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "v1.0" / "valid"
LLAMA = VECTORS / "llama-tiny-w8a8kv8.mcq"
GPTJ = VECTORS / "gptj-tiny-w8a8kv8.mcq"
F32 = 0


def _run(op: str, inputs: list[np.ndarray], extra: list[tuple] = ()) -> np.ndarray:
    program = native.core().Program(len(inputs) + 1, list(range(len(inputs))), [len(inputs)])
    program.add(op, "test", len(inputs), [("ref", i) for i in range(len(inputs))] + list(extra), [])
    (data, code, shape), = program.run([(x, F32) for x in inputs])
    assert code == F32
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


def _ops(engine, name):
    return [op for _, op, _ in engine.program(name).profile()]


@pytest.mark.parametrize("path", [LLAMA, GPTJ], ids=["llama", "gptj"])
def test_fused_programs_equal_the_unfused_bit_for_bit(path, engine_pair):
    fused, plain = engine_pair(path, fuse)
    rng = np.random.default_rng(0)
    for past in (3, 17):
        prefill_in = [rng.integers(0, 100, (2, past)), np.ones((2, past), np.int64)]
        prefill_in[1][1, :2] = 0  # a left-padded row
        logits, *kv = fused.run("prefill", prefill_in)
        for a, b in zip([logits, *kv], plain.run("prefill", prefill_in)):
            np.testing.assert_array_equal(a, b)
        step_in = [rng.integers(0, 100, (2, 1)), np.ones((2, past + 1), np.int64), *kv]
        for a, b in zip(fused.run("decode", step_in), plain.run("decode", step_in)):
            np.testing.assert_array_equal(a, b)


def test_llama_blocks_take_the_fused_forms(engine_pair):
    fused, plain = engine_pair(LLAMA, fuse)
    ops, unfused = _ops(fused, "decode"), _ops(plain, "decode")
    layers = ops.count("mcq.silu_mul")
    assert layers >= 1 and ops.count("mcq.rms_norm") == 2 * layers + 1 and ops.count("mcq.rotary") == 2 * layers
    assert "aten.rsqrt.default" not in ops and "aten.neg.default" not in ops and "aten.sigmoid.default" not in ops
    assert len(unfused) - len(ops) >= 15 * layers  # what the fusion saves per block
    # q/k/v and gate/up: one call each (the linears that read one input), five linears a block before
    assert ops.count("mcq.qlinear_group") == 2 * layers and unfused.count("mcq.qlinear_group") == 0
    assert unfused.count("mcq.qlinear") - ops.count("mcq.qlinear") == 5 * layers


def test_gptj_interleaved_rotary_is_left_unfused(engine_pair):
    fused, _ = engine_pair(GPTJ, fuse)
    assert "mcq.rotary" not in _ops(fused, "decode")


@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 5, 7), (2, 64)])
def test_rms_norm_equals_its_float32_chain(native_isa, shape, weight):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    eps = 1e-5
    sq = (x * x).astype(np.float64).sum(-1, keepdims=True)
    mean = (sq / shape[-1] * shape[-1]).astype(np.float32) / np.float32(shape[-1])
    want = x * (np.float32(1) / np.sqrt(mean + np.float32(eps)))
    if weight:
        want = w * want
    if weight:
        got = _run("mcq.rms_norm", [x, w], [("float", eps)])
    else:
        got = _run("mcq.rms_norm", [x], [("none",), ("float", eps)])
    np.testing.assert_array_equal(got, want)


def test_rms_norm_broadcasts_a_one_element_weight():
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    w = np.array([1.5], np.float32)
    np.testing.assert_array_equal(_run("mcq.rms_norm", [x, w], [("float", 1e-6)]),
                                  w * _run("mcq.rms_norm", [x], [("none",), ("float", 1e-6)]))


@pytest.mark.parametrize("half", [32, 20, 64, 100])
def test_rotary_equals_rotate_half_on_strided_and_broadcast_inputs(native_isa, half):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 3, 64)).astype(np.float32).transpose(0, 2, 1, 3)  # [B, H, S, D] strided
    cos = rng.standard_normal((1, 1, 5, 64)).astype(np.float32)
    sin = rng.standard_normal((1, 1, 5, 64)).astype(np.float32)
    h = min(half, 64)
    rotated = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    want = (x * cos) + (rotated * sin)
    np.testing.assert_array_equal(_run("mcq.rotary", [x, cos, sin], [("int", half)]), want)


def test_silu_mul_equals_the_engines_sigmoid_chain(native_isa):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((3, 1537)) * 4).astype(np.float32)
    b = rng.standard_normal((3, 1537)).astype(np.float32)
    sig = _run("aten.sigmoid.default", [a])
    np.testing.assert_array_equal(_run("mcq.silu_mul", [a, b]), (a * sig) * b)
    np.testing.assert_array_equal(_run("mcq.silu_mul", [a, b[:1]]), (a * sig) * b[:1])  # broadcast gate


def test_fused_ops_refuse_non_float32_inputs():
    program = native.core().Program(2, [0], [1])
    program.add("mcq.silu_mul", "mlp", 1, [("ref", 0), ("ref", 0)], [])
    with pytest.raises(native.core().EngineError, match="node mlp: silu_mul input: the fused form takes float32"):
        program.run([(np.zeros(4, np.float64), 1)])
