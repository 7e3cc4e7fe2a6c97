"""Resident memory the runtime gives back: repacked weights' file pages, the graph sections, the
unpacked int4 copies (issue 5: RSS close to the weight bytes)."""
from __future__ import annotations

import torch

import mcq_format
import runtime
from runtime import lower


def test_w4a16_lowering_releases_packed_weights_and_keeps_no_unpacked_copy(quantized):
    _, q, path = quantized("llama-tiny", "W4A16")
    bundle = mcq_format.read(path)
    released: list[str] = []
    source = runtime.tensor_source(bundle)

    def tensor(name: str) -> torch.Tensor:
        return source(name)

    tensor.release = released.append  # type: ignore[attr-defined]
    shared: dict = {}
    graphs = {n: runtime.model.Graph.decode(bundle.sections[ep["graph"]])
              for n, ep in bundle.sections["manifest"]["entry_points"].items()}
    for g in graphs.values():
        lower.build(g, tensor, bundle.sections["qformat"], 4, shared=shared)
    int4 = [n for n, e in bundle.sections["qformat"]["nodes"].items()
            if (e.get("weight") or {}).get("dtype") == "int4"]
    specs = [bundle.sections["qformat"]["nodes"][k]["weight"] for k in int4]
    want = [n for k, spec in zip(int4, specs) for n in (f"{k}/weight", spec["scale"], spec["zero_point"])]
    assert int4 and sorted(released) == sorted(want)  # each once, all of them, with their scales
    assert not [k for k in shared if k[0] == "stored" and k[1] in released]  # no int8 copy kept
    bundle.close()

    ids = torch.tensor([[3, 5, 7, 11, 13, 17]])
    released_pages, _ = runtime.load(path, qlevel=4, engine="reference").prefill(ids)
    in_memory, _ = q.model(4).prefill(ids)  # tensors in memory: nothing to release
    assert torch.equal(released_pages, in_memory)


def test_load_drops_the_graph_sections_it_decoded(quantized):
    _, q, path = quantized("llama-tiny", "W8A8KV8")
    model = runtime.load(path, engine="reference")
    assert not [s for s in model.bundle.sections if s.startswith("graph/")]
    assert "qformat" in model.bundle.sections and "manifest" in model.bundle.sections
    logits, _ = model.prefill(torch.tensor([[1, 2, 3]]))
    expected, _ = q.model(4).prefill(torch.tensor([[1, 2, 3]]))
    assert torch.equal(logits, expected)


def test_arena_keeps_aligned_copies_side_by_side_in_one_block():
    from runtime.memory import Arena

    arena = Arena()
    a = torch.arange(1000, dtype=torch.int32).reshape(10, 100)
    b = torch.randn(7, 3).to(torch.bfloat16)
    ka, kb = arena.keep(a), arena.keep(b)
    assert torch.equal(ka, a) and torch.equal(kb, b) and ka.dtype == a.dtype and kb.shape == b.shape
    assert ka.data_ptr() % Arena.ALIGN == 0 and kb.data_ptr() % Arena.ALIGN == 0
    assert ka.untyped_storage().data_ptr() == kb.untyped_storage().data_ptr()  # one block
    assert kb.data_ptr() - ka.data_ptr() == 4032  # 4000 bytes, rounded up to the alignment
    big = torch.zeros(Arena.BLOCK_BYTES // 2, dtype=torch.uint8)
    assert arena.keep(big).data_ptr() == big.data_ptr()  # a big one is its own mapping: left as is


def test_w4a16_packed_kernels_live_in_the_arena(quantized):
    from runtime.quant_modules import WeightOnlyLinear

    _, q, path = quantized("llama-tiny", "W4A16")
    rt = runtime.load(path, qlevel=4, engine="reference")
    kernels = [m.kernel for gm in rt._built.values() for m in gm.modules() if isinstance(m, WeightOnlyLinear)
               and m.kernel.kind == "bf16-int4"]
    blocks = {k.packed.untyped_storage().data_ptr() for k in kernels}
    assert kernels and len(blocks) == 1  # every packed weight in the one block of a tiny model
    ids = torch.tensor([[3, 5, 7, 11, 13, 17]])
    assert torch.equal(rt.prefill(ids)[0], q.model(4).prefill(ids)[0])  # q.model: no file, same kernels


def test_each_past_kv_input_is_dequantized_just_before_its_layer_reads_it(quantized):
    """Not all at the top of the step: one layer's float copy of its past is alive at a time."""
    from runtime.quant_modules import TensorQuantOp

    _, _, path = quantized("llama-tiny", "W8A8KV8")
    gm = runtime.load(path, qlevel=4, engine="reference")._module("decode")
    nodes = list(gm.graph.nodes)
    at = {n: i for i, n in enumerate(nodes)}
    past = [n for n in nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), TensorQuantOp)
            and n.args[0].op == "placeholder"]
    assert len(past) == sum(n.op == "placeholder" and n.name.startswith("past") for n in nodes) >= 4
    for d in past:
        assert all(u.op != "placeholder" for u in d.users)
        assert min(at[u] for u in d.users) - at[d] == 1  # its first reader comes right after it
    assert at[past[-1]] - at[past[0]] > len(nodes) // 3  # spread over the step, not bunched up


def test_a_compressed_tokenizer_is_inflated_at_first_use_only():
    import pytest

    from runtime.tokenizer import Tokenizer

    lazy = Tokenizer({"kind": "hf-tokenizers-json-zlib", "zlib": b"not zlib"})  # the schema checks files
    assert lazy._parsed is None
    with pytest.raises(ValueError, match="tokenizer section: not valid zlib data"):
        lazy.encode("hello")
