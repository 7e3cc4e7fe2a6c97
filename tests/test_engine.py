"""The native engine (runtime.engine) against the reference path and numpy: its models,
its float kernels on every ISA path this CPU has, and a serving path without torch."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native core not built: {native.load_error()}")

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "conformance" / "v1.0" / "valid"
LLAMA = VECTORS / "llama-tiny-w8a8kv8.mcq"
GPTJ = VECTORS / "gptj-tiny-w8a8kv8.mcq"
W8A16 = VECTORS / "gpt2-tiny-w8a16.mcq"


def _program(op: str, *args):
    """A one-op program over numpy inputs: returns a function of the inputs."""
    core = native.core()
    n_in = sum(1 for a in args if a is None)
    program = core.Program(n_in + 1, list(range(n_in)), [n_in])
    encoded, slot = [], 0
    for a in args:
        if a is None:
            encoded.append(("ref", slot))
            slot += 1
        else:
            encoded.append(a)
    program.add(op, "test", n_in, encoded, [])

    def run(*inputs):
        codes = {np.dtype(np.float32): 0, np.dtype(np.int64): 2}
        (data, code, shape), = program.run([(x, codes[x.dtype]) for x in inputs])
        return np.frombuffer(data, dtype=np.float32 if code == 0 else np.int64).reshape(shape)

    return run


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 576, 64), (5, 7, 33), (13, 64, 17), (64, 100, 200), (7, 300, 31)])
def test_float_matmul_is_within_float32_rounding_of_float64(native_isa, m, k, n):
    rng = np.random.default_rng(m * 7 + k * 11 + n)
    a, b = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    got = _program("aten.mm.default", None, None)(a, b)
    want = a.astype(np.float64) @ b.astype(np.float64)
    bound = 2.0 ** -24 * k * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))  # sum of |terms|
    assert got.shape == (m, n) and np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("n", [1, 7, 16, 33, 512])
def test_softmax_sigmoid_and_silu_are_within_float32_rounding(native_isa, n):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(3, n)) * 8).astype(np.float32)
    x[2, : n // 2] = -np.inf  # masked positions: exactly 0 after softmax
    got = _program("aten._softmax.default", None, ("int", -1), ("bool", 0))(x)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    # the row sum adds n float32 terms: a few ulps of it at most
    np.testing.assert_allclose(got, e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-30)
    assert np.all(got[2, : n // 2] == 0)
    y = x[:2]
    np.testing.assert_allclose(_program("aten.sigmoid.default", None)(y), 1 / (1 + np.exp(-y.astype(np.float64))),
                               rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(_program("aten.silu.default", None)(y), y / (1 + np.exp(-y.astype(np.float64))),
                               rtol=2e-6, atol=1e-30)


def test_an_op_error_names_the_node_and_is_a_value_error():
    run = _program("aten.view.default", None, ("list", [("int", 5)]))
    with pytest.raises(native.core().EngineError, match="node test: view: 5 elements requested, tensor has 6"):
        run(np.zeros(6, np.float32))
    assert issubclass(native.core().EngineError, ValueError)


@pytest.mark.parametrize("path", [LLAMA, GPTJ, VECTORS / "gpt2-mini-w8a8kv8-tensor-sym.mcq", W8A16],
                         ids=["llama", "gptj", "gpt2", "gpt2-w8a16"])
def test_engine_generation_equals_the_reference_path(path):
    import runtime

    engine, reference = runtime.load(path, engine="native"), runtime.load(path, engine="reference")
    prompts = [[3, 17, 5, 9], [8, 1, 1, 2, 30, 12], [4]]
    for prompt in prompts:
        assert engine.generate(prompt, max_new_tokens=12) == reference.generate(prompt, max_new_tokens=12)
    assert engine.generate(prompts, max_new_tokens=8) == reference.generate(prompts, max_new_tokens=8)  # padded batch


def test_engine_cache_is_a_value_decoding_twice_from_it_branches():
    import runtime

    model = runtime.load(LLAMA, engine="native")
    _, cache = model.prefill(np.array([[3, 17, 5, 9]]), reserve=4)
    a_logits, a = model.decode([11], cache)
    b_logits, b = model.decode([12], cache)  # a branch: must not see the first decode's entry
    c_logits, _ = model.decode([12], model.prefill(np.array([[3, 17, 5, 9]]))[1])
    np.testing.assert_array_equal(b_logits, c_logits)
    assert a.length == b.length == 5 and not np.array_equal(a_logits, b_logits)
    np.testing.assert_array_equal(a.tensors[0][:, :, :4], b.tensors[0][:, :, :4])


def test_native_refuses_what_it_cannot_run_and_auto_falls_back_with_a_warning():
    import runtime

    with pytest.raises(ValueError, match="weight-only"):  # qlevel 3: the exact float32 linears
        runtime.load(W8A16, qlevel=3, engine="native")
    with pytest.raises(ValueError, match="engine must be one of"):
        runtime.load(W8A16, engine="fast")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = runtime.load(W8A16, qlevel=3, engine="auto")
    assert isinstance(model, runtime.Model)
    assert any("running the reference path" in str(w.message) and "weight-only" in str(w.message) for w in caught)


def test_the_engine_is_the_default_at_qlevel_4_and_the_reference_runs_the_rest(monkeypatch):
    """runtime.load(path): the engine at qlevel 4 (the bundle's own or asked), the reference path
    at qlevels 2 and 3, for float bundles and where the engine does not run a graph, with no
    warning; $MCQ_ENGINE picks another default; compile=True is deprecated."""
    import runtime
    from runtime.engine import Unsupported
    from runtime.engine.model import EngineModel

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default falls back quietly
        assert type(runtime.load(LLAMA)) is EngineModel
        assert type(runtime.load(LLAMA, qlevel=4)) is EngineModel
        assert type(runtime.load(W8A16)) is EngineModel
        for level in (2, 3):
            assert isinstance(runtime.load(LLAMA, qlevel=level), runtime.Model)
        assert isinstance(runtime.load(VECTORS / "llama-tiny-float.mcq"), runtime.Model)
        monkeypatch.setattr(EngineModel, "__init__", lambda *a: (_ for _ in ()).throw(Unsupported("an op it lacks")))
        assert isinstance(runtime.load(LLAMA), runtime.Model)
    with pytest.warns(RuntimeWarning, match="an op it lacks"):  # asked for "auto": says why
        runtime.load(LLAMA, engine="auto")
    monkeypatch.undo()
    monkeypatch.setenv("MCQ_ENGINE", "reference")
    assert isinstance(runtime.load(LLAMA), runtime.Model)
    assert type(runtime.load(LLAMA, engine="native")) is EngineModel  # an argument beats the default
    monkeypatch.setenv("MCQ_ENGINE", "turbo")
    with pytest.raises(ValueError, match=r"\$MCQ_ENGINE must be one of reference, native, auto, got 'turbo'"):
        runtime.load(LLAMA)
    monkeypatch.delenv("MCQ_ENGINE")
    with pytest.warns(DeprecationWarning, match="compile=True is deprecated"):
        assert isinstance(runtime.load(LLAMA, compile=True), runtime.Model)


def test_engine_model_runs_entry_points_as_the_reference_model_does():
    """run by position or by input name, model(...) for the single entry point, and the same
    errors (EntryPointError, TypeError naming the input) as runtime.Model."""
    import runtime

    engine, reference = runtime.load(LLAMA, engine="native"), runtime.load(LLAMA, engine="reference")
    ids, mask = np.array([[3, 17, 5, 9]]), np.ones((1, 4), dtype=np.int64)
    by_position = engine.run("prefill", ids, mask)
    by_name = engine.run("prefill", attention_mask=mask, input_ids=ids)
    for a, b in zip(by_position, by_name):
        np.testing.assert_array_equal(a, b)
    ref_logits = reference.run("prefill", ids, mask)[0].numpy()
    assert np.abs(by_position[0] - ref_logits).max() < 1e-2 * np.abs(ref_logits).max()
    for model in (engine, reference):
        with pytest.raises(runtime.EntryPointError, match="no 'nope' entry point"):
            model.run("nope")
        with pytest.raises(TypeError, match="missing input\\(s\\) attention_mask"):
            model.run("prefill", ids)
        with pytest.raises(TypeError, match="unexpected or repeated input 'input_ids'"):
            model.run("prefill", ids, mask, input_ids=ids)
        with pytest.raises(runtime.EntryPointError, match="sentence_embedding"):
            model.embed("hello")
        with pytest.raises(runtime.EntryPointError, match="no 'forward' entry point"):
            model(ids, mask)


def test_serving_on_the_engine_never_imports_torch():
    """Nor OpenSSL (hashlib's backend, ~3.5 MiB resident in every server process): reading a
    bundle hashes its sections with the built-in SHA-256, greedy decoding draws no random numbers."""
    code = ("import sys, runtime; m = runtime.load(sys.argv[1], engine='native'); "
            "print(m.generate([3, 17, 5], max_new_tokens=4)); print('torch' in sys.modules, '_hashlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(LLAMA)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout.split("\n")
    assert out[1] == "False False", out
    assert len(eval(out[0])) == 4  # noqa: S307 - our own printed list


@pytest.mark.parametrize("path", [LLAMA, GPTJ], ids=["llama-gqa", "gptj"])
def test_attention_reads_the_int8_cache_and_changes_no_value(path, engine_pair, monkeypatch):
    """Q·Kᵀ takes the cached integers (runtime.engine.kv_shadow) instead of requantizing the
    dequantized past, P·V dequantizes them inside the product: the decode step's outputs equal
    the float-path plan's bit for bit."""
    from runtime.engine import attention, kv_shadow

    monkeypatch.setattr(attention, "ENABLED", False)  # the unfused attention's ops (fused: test_engine_attention.py)
    fast, plain = engine_pair(path, kv_shadow)
    ops = [op for _, op, _ in fast.program("decode").profile()]
    assert "mcq.qbmm_int8b" in ops and "mcq.qbmm" not in ops  # Q·Kᵀ on the integers
    assert "mcq.bmm_int8b" in ops and "aten.bmm.default" not in ops  # P·V too
    assert not {"mcq.qbmm_int8b", "mcq.bmm_int8b"} & {op for _, op, _ in plain.program("decode").profile()}
    rng = np.random.default_rng(0)
    for past in (3, 17):
        logits, *kv = fast.run("prefill", [rng.integers(0, 100, (2, past)), np.ones((2, past), np.int64)])
        inputs = [rng.integers(0, 100, (2, 1)), np.ones((2, past + 1), np.int64), *kv]
        for a, b in zip(fast.run("decode", inputs), plain.run("decode", inputs)):
            np.testing.assert_array_equal(a, b)


def test_encoder_embeddings_on_the_engine_match_the_reference(tmp_path):
    import mcq
    import runtime
    from mcq.examples import load_example

    model, tok = load_example("bert-tiny")
    path = tmp_path / "bert.mcq"
    mcq.quantize(model, mcq.preset("W8A8"), tokenizer=tok, progress=False).save(path)
    texts = ["hello world", "a longer sentence about quantization and its runtime", "x"]
    engine, reference = runtime.load(path, engine="native"), runtime.load(path, engine="reference")
    got, want = engine.embed(texts), reference.embed(texts).numpy()
    assert got.shape == want.shape == (3, want.shape[1])
    np.testing.assert_allclose(got, want, atol=1e-5)  # float glue within rounding (spec Q.4b)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_concurrent_calls_from_threads_give_the_sequential_results():
    """Program.run releases the GIL and the pool runs one loop at a time: calls from several
    threads (a server's) queue for it and each gets its own results."""
    import threading

    import runtime

    model = runtime.load(LLAMA, engine="native")
    prompts = [[3, 17, 5, 9], [8, 1, 1, 2, 30, 12], [4, 4], [21, 7, 9]]
    want = [model.generate(p, max_new_tokens=10) for p in prompts]
    got: dict[int, list] = {}

    def work(i):
        for _ in range(5):
            got[i] = model.generate(prompts[i], max_new_tokens=10)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert [got[i] for i in range(len(prompts))] == want


def test_only_weight_only_linears_keep_qlevel_3_off_the_engine():
    """qlevel 3 equals qlevel 4 for integer formats (the engine runs both); only a weight-only
    *linear* (no input spec) makes qlevel 3 the reference's exact float32 product. An int8
    embedding table (a weight spec, no input spec, kind "embedding") is not one."""
    import runtime

    w = {"dtype": "int8", "nbits": 8}
    assert runtime._has_weight_only({"nodes": {"l": {"kind": "linear", "weight": w, "inputs": {}}}})
    assert not runtime._has_weight_only({"nodes": {"e": {"kind": "embedding", "weight": w}}})
    assert not runtime._has_weight_only({"nodes": {"l": {"kind": "linear", "weight": w, "inputs": {"x": w}}}})
    assert not runtime._has_weight_only(None)
    assert type(runtime.load(LLAMA, qlevel=3, engine="native")).__name__ == "EngineModel"


def test_embedding_arguments_that_only_touch_gradients_are_dropped():
    """A float token table with a pad token exports aten.embedding(w, ids, padding_idx): the
    engine plans it (forward values do not depend on it); anything past the schema's trailing
    ignorable parameters is still refused."""
    from runtime.engine.schemas import SchemaError, normalize

    assert normalize("aten.embedding.default", ["w", "ids", 2], {}) == ["w", "ids"]
    assert normalize("aten.embedding.default", ["w", "ids", 2, False, False], {}) == ["w", "ids"]
    assert normalize("aten.embedding.default", ["w", "ids"], {"padding_idx": 2}) == ["w", "ids"]
    with pytest.raises(SchemaError, match="6 positional arguments"):
        normalize("aten.embedding.default", ["w", "ids", 2, False, False, 1], {})
    with pytest.raises(SchemaError, match="3 positional arguments"):
        normalize("aten.relu.default", ["x", 1, 2], {})


def test_a_float_token_table_with_a_pad_token_runs_on_the_engine(tiny_models, tmp_path):
    import mcq
    import runtime

    model = tiny_models("llama-tiny")
    model.model.embed_tokens.padding_idx = 0  # as SmolLM2's: the export then carries padding_idx
    q = mcq.quantize(model, mcq.QuantConfig.from_dict({"preset": "W8A16", "embedding_dtype": "float32"}),
                     progress=False)
    assert any(n["op"] == "aten.embedding.default" and len(n["args"]) == 3 for n in q.sections["graph/decode"]["nodes"])
    q.save(tmp_path / "t.mcq")
    engine = runtime.load(tmp_path / "t.mcq", engine="native")
    reference = runtime.load(tmp_path / "t.mcq", qlevel=3, engine="reference")
    ids = [[3, 17, 5, 9, 0, 41]]
    assert engine.generate(ids, max_new_tokens=6, stop_at_eos=False) == \
        reference.generate(ids, max_new_tokens=6, stop_at_eos=False)
