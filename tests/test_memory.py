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
    assert int4 and sorted(released) == sorted(f"{k}/weight" for k in int4)  # each once, all of them
    assert not [k for k in shared if k[0] == "stored" and k[1] in released]  # no int8 copy kept
    bundle.close()

    ids = torch.tensor([[3, 5, 7, 11, 13, 17]])
    released_pages, _ = runtime.load(path, qlevel=4).prefill(ids)
    in_memory, _ = q.model(4).prefill(ids)  # tensors in memory: nothing to release
    assert torch.equal(released_pages, in_memory)


def test_load_drops_the_graph_sections_it_decoded(quantized):
    _, q, path = quantized("llama-tiny", "W8A8KV8")
    model = runtime.load(path)
    assert not [s for s in model.bundle.sections if s.startswith("graph/")]
    assert "qformat" in model.bundle.sections and "manifest" in model.bundle.sections
    logits, _ = model.prefill(torch.tensor([[1, 2, 3]]))
    expected, _ = q.model(4).prefill(torch.tensor([[1, 2, 3]]))
    assert torch.equal(logits, expected)
