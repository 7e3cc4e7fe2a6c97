"""Attention over the int8 KV cache as one engine op (runtime/engine/attention.py,
runtime/csrc/ops_attention.cpp): programs planned with it give the unfused programs' outputs bit
for bit on every ISA path, read the cache's parts in place, and the op alone equals a numpy
reference of the chain it stands for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime import native
from runtime.engine import attention
from runtime.engine.quant import CODE_NUMPY, NUMPY_CODES

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native core not built: {native.load_error()}")

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "conformance" / "v1.0" / "valid"
LLAMA = VECTORS / "llama-tiny-w8a8kv8.mcq"
GPTJ = VECTORS / "gptj-tiny-w8a8kv8.mcq"
FLOAT_CACHE = {"llama-float": VECTORS / "llama-tiny-float.mcq", "llama-w8a8": VECTORS / "llama-mini-w8a8.mcq",
               "gpt2-w8a16": VECTORS / "gpt2-tiny-w8a16.mcq"}  # float32 KV caches
INT8 = 4


def _ops(engine, name):
    return [op for _, op, _ in engine.program(name).profile()]


@pytest.mark.parametrize("path", [LLAMA, GPTJ, *FLOAT_CACHE.values()], ids=["llama-gqa", "gptj", *FLOAT_CACHE])
def test_fused_attention_equals_the_unfused_program_bit_for_bit(path, engine_pair, native_isa):
    fused, plain = engine_pair(path, attention)
    assert "mcq.attention" in _ops(fused, "decode") and "mcq.attention" not in _ops(plain, "decode")
    rng = np.random.default_rng(1)
    for past in (3, 40):  # 40: more query rows than one block of the op
        prefill_in = [rng.integers(0, 100, (2, past)), np.ones((2, past), np.int64)]
        prefill_in[1][1, :5] = 0  # a left-padded row: fully masked query rows, skipped keys
        logits, *kv = fused.run("prefill", prefill_in)
        for a, b in zip([logits, *kv], plain.run("prefill", prefill_in)):
            np.testing.assert_array_equal(a, b)
        mask = prefill_in[1]
        for _ in range(3):
            mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
            step_in = [rng.integers(0, 100, (2, 1)), mask, *kv]
            out = fused.run("decode", step_in)
            for a, b in zip(out, plain.run("decode", step_in)):
                np.testing.assert_array_equal(a, b)
            kv = [np.concatenate([old, new], axis=2) for old, new in zip(kv, out[1:])]


def test_llama_attention_reads_the_cache_in_place(engine_pair):
    fused, plain = engine_pair(LLAMA, attention)
    for name in ("prefill", "decode"):
        ops, unfused = _ops(fused, name), _ops(plain, name)
        layers = ops.count("mcq.attention")
        assert layers == unfused.count("mcq.qbmm_int8b") + unfused.count("mcq.qbmm") >= 1
        assert not {"aten._softmax.default", "aten.bmm.default", "mcq.bmm_int8b", "mcq.qbmm_int8b", "mcq.qbmm"} & set(ops)
        if name == "decode":  # no concatenated cache (two cats a layer before)
            assert unfused.count("aten.cat.default") - ops.count("aten.cat.default") == 2 * layers
        assert len(unfused) - len(ops) >= 15 * layers


def _spec(scale, zp):
    s = np.asarray(scale, dtype=np.float32).reshape(-1)
    z = np.asarray(zp, dtype=np.int32).reshape(-1)
    return native.core().quant_spec(s, z, -1 if s.size == 1 else 0, s.size > 1, -128, 127, INT8, None, None, None, None)


@pytest.mark.parametrize("cache", ["int8", "float32"])
@pytest.mark.parametrize("s,past,rep", [(1, 9, 3), (5, 0, 1), (37, 4, 2)])
def test_attention_op_equals_a_numpy_reference(native_isa, s, past, rep, cache):
    rng = np.random.default_rng(s * 10 + past)
    b, kv, d = 2, 2, 8
    heads, length = kv * rep, past + s
    q = rng.normal(size=(b * heads, s, d)).astype(np.float32)
    k_parts = [rng.integers(-128, 128, (b, kv, n, d), dtype=np.int8) for n in (past, s) if n]
    v_parts = [rng.integers(-128, 128, (b, kv, n, d), dtype=np.int8) for n in (past, s) if n]
    if cache == "float32":
        k_parts = [(p * 0.05).astype(np.float32) for p in k_parts]
        v_parts = [(p * 0.05).astype(np.float32) for p in v_parts]
    mask = np.where(np.tril(np.ones((s, length)), past) > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
    mask = np.broadcast_to(mask, (b, 1, s, length)).copy()
    mask[1, :, :, :2] = np.finfo(np.float32).min  # padding: keys nobody sees
    sq, zq = 0.02, 3
    sk = rng.uniform(0.01, 0.03, size=heads).astype(np.float32)
    zk = rng.integers(-5, 5, size=heads)
    sv = np.repeat(rng.uniform(0.01, 0.03, size=kv), rep).astype(np.float32)
    zv = np.repeat(rng.integers(-5, 5, size=kv), rep)
    inputs = [q, *k_parts, *v_parts, mask]
    n_in, nk = len(inputs), len(k_parts)
    program = native.core().Program(n_in + 1, list(range(n_in)), [n_in])
    specs = [("object", _spec(sq, zq)), ("object", _spec(np.tile(sk, b), np.tile(zk, b))),
             ("object", _spec(np.tile(sv, b), np.tile(zv, b)))] if cache == "int8" else [("none",)] * 3
    program.add("mcq.attention", "test", n_in, [
        ("ref", 0), ("list", [("ref", 1 + i) for i in range(nk)]), ("list", [("ref", 1 + nk + i) for i in range(nk)]),
        ("ref", n_in - 1), *specs, ("int", rep), ("float", 0.125), ("bool", 0)], [])
    (data, code, shape), = program.run([(x, NUMPY_CODES[x.dtype]) for x in inputs])
    got = np.frombuffer(data, dtype=CODE_NUMPY[code]).reshape(shape)

    K = np.concatenate(k_parts, axis=2).astype(np.int64)
    V = np.concatenate(v_parts, axis=2).astype(np.int64)
    t = q / np.float32(sq)
    qq = np.clip(np.trunc(t + np.copysign(np.float32(0.5), t)) + zq, -128, 127).astype(np.int64)
    want = np.empty_like(got)
    if cache == "float32":
        K, V = np.concatenate(k_parts, axis=2).astype(np.float64), np.concatenate(v_parts, axis=2).astype(np.float64)
    for i in range(b * heads):
        bb, h = divmod(i, heads)
        g = h // rep
        if cache == "float32":
            x = q[i].astype(np.float64) @ K[bb, g].T * 0.125 + mask[bb, 0]
            p = np.exp(x - x.max(axis=-1, keepdims=True))
            want[i] = (p / p.sum(axis=-1, keepdims=True)) @ V[bb, g]
            continue
        acc = (qq[i] - zq) @ (K[bb, g] - zk[h]).T  # exact integers
        x = acc.astype(np.float64) * float(np.float32(sq) * sk[h]) * 0.125 + mask[bb, 0]
        p = np.exp(x - x.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        want[i] = p @ ((V[bb, g] - zv[h]) * np.float64(sv[h]))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_attention_op_names_mismatched_operands():
    program = native.core().Program(4, [0, 1, 2], [3])
    spec = _spec(0.1, 0)
    program.add("mcq.attention", "attn", 3, [("ref", 0), ("list", [("ref", 1)]), ("list", [("ref", 1)]), ("ref", 2),
                                              ("object", spec), ("object", spec), ("object", spec), ("int", 2),
                                              ("float", 1.0), ("bool", 0)], [])
    q = np.zeros((3, 1, 8), np.float32)  # 3 query heads: not a multiple of KV heads x rep
    k = np.zeros((1, 1, 4, 8), np.int8)
    with pytest.raises(ValueError, match="attn.*attention: q"):
        program.run([(q, 0), (k, INT8), (np.zeros((1, 1, 1, 4), np.float32), 0)])


@pytest.mark.parametrize("path", [LLAMA, GPTJ, FLOAT_CACHE["llama-float"]], ids=["llama-gqa", "gptj", "llama-float"])
def test_a_sequence_decodes_to_the_same_bits_alone_or_left_padded_in_a_batch(path, native_isa):
    """Serving's batch invariance (runtime.scheduler): a row's softmax lanes start at its first
    key that weighs, so the padding a longer neighbour puts before it changes nothing."""
    import runtime
    from runtime.engine.model import EngineCache

    model = runtime.load(path, engine="native")
    rng = np.random.default_rng(0)
    vocab = int(model.manifest["model"]["config"]["vocab_size"])
    prompt = rng.integers(3, vocab, 5)
    logits, alone = model.prefill(prompt[None], None, all_logits=False)
    first = logits[:, -1].argmax(-1)

    def padded(cache, n):
        pad = [(0, 0), (0, 0), (n, 0), (0, 0)]
        return EngineCache([np.pad(t, pad) for t in cache.tensors], np.pad(cache.attention_mask, [(0, 0), (n, 0)]))

    def run(cache, rows):
        token, out = np.repeat(first, rows), []
        for _ in range(40):  # past 16- and 64-key boundaries
            step, cache = model.decode(token, cache)
            out.append(step[0].copy())
            token = np.repeat(step[:1].argmax(-1), rows)
        return out

    expected = run(alone, 1)
    for n in (1, 3, 17, 70):
        # the row under test keeps its padding; its neighbour is as long as the padded row
        neighbour = padded(alone, n)
        batch = EngineCache([np.concatenate([a, b]) for a, b in zip(padded(alone, n).tensors, neighbour.tensors)],
                            np.concatenate([padded(alone, n).attention_mask, np.ones_like(neighbour.attention_mask)]))
        got = run(batch, 2)
        assert all(np.array_equal(e, g) for e, g in zip(expected, got)), f"padding {n}"


@pytest.mark.parametrize("path", [LLAMA, GPTJ, FLOAT_CACHE["llama-float"], FLOAT_CACHE["gpt2-w8a16"]],
                         ids=["llama-gqa", "gptj", "llama-float", "gpt2-w8a16"])
def test_a_prompt_prefills_to_the_same_bits_alone_or_left_padded_in_a_batch(path, native_isa):
    """The scheduler prefills prompts that arrive together as one left-padded batch."""
    import runtime

    model = runtime.load(path, engine="native")
    rng = np.random.default_rng(1)
    vocab = int(model.manifest["model"]["config"]["vocab_size"])
    prompt = rng.integers(3, vocab, 7)
    alone_logits, alone = model.prefill(prompt[None], None, all_logits=False)
    for pad in (1, 9, 30):
        longer = rng.integers(3, vocab, 7 + pad)
        ids = np.stack([np.concatenate([np.zeros(pad, np.int64), prompt]), longer])
        mask = np.stack([np.r_[np.zeros(pad, np.int64), np.ones(7, np.int64)], np.ones(7 + pad, np.int64)])
        logits, cache = model.prefill(ids, mask, all_logits=False)
        assert np.array_equal(logits[0], alone_logits[0]), f"padding {pad}"
        assert all(np.array_equal(t[0, :, pad:], a[0]) for t, a in zip(cache.tensors, alone.tensors))
