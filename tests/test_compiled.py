"""runtime.load(..., compile=True): torch.compile of each entry point, with the interpreted
graph as the fallback."""
from __future__ import annotations

import shutil

import pytest
import torch

import runtime
from runtime import compiled

PROMPTS = [[5, 9, 33, 7, 81, 2, 14], [40, 41, 42]]


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="Inductor needs a C++ compiler")
def test_compiled_generation_matches_the_interpreted_path(quantized):
    _, _, path = quantized("llama-tiny", "W8A8KV8")
    ref = runtime.load(path)
    fast = runtime.load(path, compile=True)
    assert all(isinstance(m, compiled.CompiledEntryPoint) for m in fast._modules.values())
    ids = torch.tensor([PROMPTS[0]])
    l_ref, c_ref = ref.prefill(ids)
    l_fast, c_fast = fast.prefill(ids)
    # integer matmuls are the same custom op; fused float glue may move the last float bits
    assert torch.allclose(l_ref, l_fast, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(c_ref.tensors, c_fast.tensors))  # int8 KV cache
    step_ref, _ = ref.decode(l_ref[:, -1].argmax(-1), c_ref)
    step_fast, _ = fast.decode(l_ref[:, -1].argmax(-1), c_ref)
    assert torch.allclose(step_ref, step_fast, rtol=1e-5, atol=1e-5)
    assert fast.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False) == \
        ref.generate(PROMPTS, max_new_tokens=12, stop_at_eos=False)
    assert all(m.compiled for m in fast._modules.values())  # no silent fallback


def test_a_failing_compile_falls_back_to_the_interpreted_graph(quantized, monkeypatch):
    _, _, path = quantized("llama-tiny", "W8A8KV8")

    def broken(module, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(compiled.torch, "compile", broken)
    fast = runtime.load(path, compile=True)
    ids = torch.tensor([PROMPTS[0]])
    with pytest.warns(RuntimeWarning, match="'prefill'.*no C\\+\\+ compiler"):
        logits, _ = fast.prefill(ids)
    assert torch.equal(logits, runtime.load(path).prefill(ids)[0])
    assert not fast._modules["prefill"].compiled and "no C++ compiler" in fast._modules["prefill"].error
