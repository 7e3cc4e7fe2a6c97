"""runtime.load(..., compile=True): each entry point traced and compiled by Inductor, one variant
per input pattern, with the interpreted graph as the fallback."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import runtime
from runtime import compiled

PROMPTS = [[5, 9, 33, 7, 81, 2, 14], [40, 41, 42]]
needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="Inductor needs a C++ compiler")


@needs_compiler
def test_compiled_generation_matches_the_interpreted_path(quantized):
    _, _, path = quantized("llama-tiny", "W8A8KV8")
    ref = runtime.load(path, engine="reference")
    fast = runtime.load(path, compile=True, engine="reference")
    assert all(isinstance(m, compiled.CompiledEntryPoint) for m in fast._built.values())
    ids = torch.tensor([PROMPTS[0]])
    l_ref, c_ref = ref.prefill(ids)
    l_fast, c_fast = fast.prefill(ids)
    # same integer GEMMs; fused float glue only where it rounds as the interpreter: same bits
    assert torch.equal(l_ref, l_fast)
    assert all(torch.equal(a, b) for a, b in zip(c_ref.tensors, c_fast.tensors))  # int8 KV cache
    # decode at batch 1 (a one-row int8 GEMM: the layout numerics fixes for the compiler)
    step_ref, _ = ref.decode(l_ref[:, -1].argmax(-1), c_ref)
    step_fast, _ = fast.decode(l_ref[:, -1].argmax(-1), c_ref)
    assert torch.equal(step_ref, step_fast)
    # batch 2 with padding, through the preallocated cache (non-contiguous views of its buffers)
    assert fast.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False) == \
        ref.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False)
    assert all(m.compiled for m in fast._built.values())  # no silent fallback
    decode = fast._module("decode")
    patterns = set(decode.variants)
    assert len(patterns) >= 2  # batch 1 from the cache made by prefill, batch 2 in generate
    # a growing past length reuses the variant of its pattern: no compile per step
    fast.generate(PROMPTS, max_new_tokens=20, stop_at_eos=False)
    assert set(decode.variants) == patterns


@needs_compiler
def test_compiled_weight_only_bundle_matches_the_interpreted_path(quantized):
    _, _, path = quantized("llama-tiny", "W4A16")
    ref = runtime.load(path, qlevel=4, engine="reference")
    fast = runtime.load(path, qlevel=4, compile=True, engine="reference")
    ids = torch.tensor([PROMPTS[0]])
    l_ref, c_ref = ref.prefill(ids)
    l_fast, _ = fast.prefill(ids)
    assert torch.equal(l_ref, l_fast)  # the same packed kernels, bf16 casts rounded alike
    step_ref, _ = ref.decode(torch.tensor([3]), c_ref)
    step_fast, _ = fast.decode(torch.tensor([3]), c_ref)
    assert torch.equal(step_ref, step_fast)
    assert fast._module("prefill").compiled and fast._module("decode").compiled


def test_a_variant_runs_only_the_sizes_its_trace_fixed(quantized, monkeypatch):
    _, _, path = quantized("llama-tiny", "W8A8KV8")
    calls = []

    def fake_compile(module, args):
        calls.append([tuple(a.shape) for a in args])
        # as if the trace had fixed input 0's second size and tied inputs 0 and 1 in their first
        return compiled.Variant(lambda *a: (_ for _ in ()).throw(AssertionError("must not run")),
                                fixed=[(0, 1, 99)], tied=[[(0, 0), (1, 0)]], compile_seconds=0.0)

    monkeypatch.setattr(compiled, "compile_variant", fake_compile)
    fast, ref = runtime.load(path, compile=True, engine="reference"), runtime.load(path, engine="reference")
    ids = torch.tensor([PROMPTS[0]])
    logits, _ = fast.prefill(ids)  # seq 7, not 99: the interpreter runs it
    assert torch.equal(logits, ref.prefill(ids)[0])
    fast.prefill(torch.tensor([PROMPTS[0][:5]]))  # same pattern: no second compile
    assert len(calls) == 1


def test_a_failing_compile_falls_back_to_the_interpreted_graph(quantized, monkeypatch):
    _, _, path = quantized("llama-tiny", "W8A8KV8")

    def broken(module, args):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(compiled, "compile_variant", broken)
    fast = runtime.load(path, compile=True, engine="reference")
    ids = torch.tensor([PROMPTS[0]])
    with pytest.warns(RuntimeWarning, match="'prefill'.*no C\\+\\+ compiler"):
        logits, _ = fast.prefill(ids)
    assert torch.equal(logits, runtime.load(path, engine="reference").prefill(ids)[0])
    assert not fast._module("prefill").compiled and "no C++ compiler" in fast._module("prefill").error


def test_a_traced_attention_product_of_symbolic_depth_accumulates_exactly():
    """P.V over a growing past: its depth is a symbol in the trace, so the compiled code cannot
    take the float32 GEMM (exact only below 2^24 / span positions): it must accumulate in float64."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from runtime import numerics
    from runtime.numerics import QuantParams

    pa = QuantParams(torch.tensor(1 / 255), torch.tensor(-128, dtype=torch.int32), -128, 127)
    pb = QuantParams(torch.tensor(0.05), torch.tensor(0, dtype=torch.int32), -127, 127)
    a, b = torch.rand(2, 1, 300), torch.randn(2, 300, 8) * 3

    def attend(a, b):
        return numerics.qbmm(a, pa, b, pb)

    with compiled._tracing():
        traced = make_fx(attend, tracing_mode="symbolic", _allow_non_fake_inputs=True)(a, b)
    bmms = [n for n in traced.graph.nodes if n.target == torch.ops.aten.bmm.default]
    assert [n.args[0].meta["val"].dtype for n in bmms] == [torch.float64]
    assert torch.equal(traced(a, b), numerics.qbmm(a, pa, b, pb, emulate=True))


def test_only_exactly_rounded_ops_are_left_to_inductor():
    """Reductions, transcendental functions and GEMMs keep the interpreter's ATen kernels (their
    result depends on summation order and implementation); x ** 2 and elementwise arithmetic fuse."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def glue(x, w):
        norm = x * torch.rsqrt((x ** 2).mean(-1, keepdim=True) + 1e-5)
        gate = torch.sigmoid(norm) * norm
        return torch.softmax(gate @ w, -1).sum(-1, keepdim=True) + torch.cos(x).sum() + x ** 0.5

    traced = make_fx(glue)(torch.rand(2, 4), torch.rand(4, 3))
    aten = torch.ops.aten
    assert compiled._inexact_ops(traced) == {
        aten.mean.dim, aten.sigmoid.default, aten.mm.default, aten._softmax.default,
        aten.cos.default, aten.sum.default, aten.sum.dim_IntList, aten.pow.Tensor_Scalar}  # pow: of 0.5
    kept = {n.target for n in traced.graph.nodes if n.op == "call_function"} - compiled._inexact_ops(traced)
    assert {aten.mul.Tensor, aten.add.Tensor, aten.rsqrt.default} <= kept


class _FloatGlue(torch.nn.Module):
    def forward(self, x, v):
        p = torch.softmax(x * 0.37, -1)
        # one-row bmm: Inductor's own lowering turns it into a product and a sum
        return (x * 3.0).mean(-1, keepdim=True), torch.sigmoid(x) * x, torch.cos(x), torch.bmm(p[:, None, :], v)


@needs_compiler
@pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                    reason="Inductor's fresh C++ kernels do not build against a lowered ATen capability "
                           "(a torch limitation: CppCompileError); the compiled path follows the CPU's own ISA")
def test_compiled_float_glue_equals_eager_even_after_another_compile(monkeypatch):
    """Inductor's own reductions and functions round differently from ATen's (the inexact compile
    shows it); the compiled path's output equals eager bit for bit, also when an earlier compile in
    the process (anyone's torch.compile) has built Inductor's cached decomposition table."""
    from torch import fx

    gm = fx.symbolic_trace(_FloatGlue())
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(8, 576, generator=gen) * 5, torch.randn(8, 576, 64, generator=gen)
    eager = gm(x, v)
    monkeypatch.setattr(compiled, "EXACT_FLOAT_GLUE", False)
    inexact = compiled.compile_variant(gm, (x, v)).run(x, v)
    assert not all(torch.equal(a, b) for a, b in zip(inexact, eager))
    monkeypatch.setattr(compiled, "EXACT_FLOAT_GLUE", True)
    exact = compiled.compile_variant(gm, (x, v)).run(x, v)
    assert all(torch.equal(a, b) for a, b in zip(exact, eager))
