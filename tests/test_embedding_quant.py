"""int8 embedding tables (spec Q.3a): per-row quantization, a tied table stored once with its
lm_head, and the lookup at every qlevel."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import mcq
import mcq_format
import runtime
from runtime import lower, numerics
from runtime.numerics import QuantParams

IDS = torch.tensor([[5, 17, 17, 300, 2, 511, 0, 42]])


def _embedding_nodes(q):
    return {k: e for k, e in q.sections["qformat"]["nodes"].items() if e["kind"] == "embedding"}


def test_embedding_rows_equal_the_dequantized_table_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    table = torch.randint(-127, 128, (64, 24), generator=g, dtype=torch.int8)
    qp = QuantParams(torch.rand(64, generator=g) * 0.1 + 1e-3, torch.zeros(64, dtype=torch.int32), -127, 127, axis=0)
    smooth = torch.rand(24, generator=g) + 0.5
    ids = torch.randint(0, 64, (3, 7), generator=g)
    whole = numerics.dequantize(table, qp)
    assert torch.equal(numerics.embedding_rows(table, qp, ids), torch.nn.functional.embedding(ids, whole))
    assert torch.equal(numerics.embedding_rows(table, qp, ids, smooth),
                       torch.nn.functional.embedding(ids, whole / smooth))
    manual = (table.numpy()[ids.numpy()].astype(np.float32) * qp.scale.numpy()[ids.numpy()][..., None]) / smooth.numpy()
    np.testing.assert_array_equal(numerics.embedding_rows(table, qp, ids, smooth).numpy(), manual)


def test_untied_table_is_int8_rows_and_the_float_table_is_gone(quantized, tiny_models):
    model, q, path = quantized("llama-tiny", "W8A8KV8")
    (qkey, entry), = _embedding_nodes(q).items()
    assert qkey == "model.embed_tokens/embedding0" and "shared_with" not in entry["weight"]
    with mcq_format.read(path) as b:
        assert "model.embed_tokens.weight" not in b.tensor_names()
        stored = b.tensor(f"{qkey}/weight")
        scale = b.tensor(f"{qkey}/weight.scale")
    float_table = model.model.embed_tokens.weight.detach()
    assert stored.dtype == np.int8 and stored.shape == tuple(float_table.shape) and scale.shape == (512,)
    # per-row abs-max: every row reaches +-127 and dequantizes within half a step
    assert (np.abs(stored).max(axis=1) == 127).all()
    err = np.abs(stored.astype(np.float32) * scale[:, None] - float_table.numpy())
    assert (err <= scale[:, None] / 2 + 1e-7).all()


def test_tied_table_is_stored_once_with_the_lm_head(tiny_models, tmp_path):
    # lm_head's input unrotated (the preset rotates it: tests/test_rotation.py covers that table)
    model = tiny_models("gpt2-tiny")
    q = mcq.quantize(model, dataclasses.replace(mcq.preset("W8A8KV8"), overrides=()), progress=False)
    path = tmp_path / "gpt2-tiny.mcq"
    q.save(path)
    tables = _embedding_nodes(q)
    token = tables["transformer.wte/embedding0"]["weight"]
    assert token["shared_with"] == "lm_head/linear0" and token["scale"] == "lm_head/linear0/weight.scale"
    assert token["smooth"] == "lm_head/linear0/x.smooth"  # SmoothQuant on lm_head's input: divided back out
    assert "shared_with" not in tables["transformer.wpe/embedding0"]["weight"]  # positions: not tied
    graph = q.sections["graph/prefill"]
    assert "lm_head/linear0/weight" in str(graph) and "transformer.wte.weight" not in str(graph)
    rt = runtime.load(path, qlevel=4, engine="reference")
    out = {}
    rt._module("prefill").get_submodule(next(n for n, m in rt._module("prefill").named_children()
                                              if "wte" in n)).register_forward_hook(
        lambda m, a, o: out.setdefault("rows", o))
    rt.prefill(IDS)
    with mcq_format.read(path) as b:
        wq = b.tensor("lm_head/linear0/weight").astype(np.float32)
        s = b.tensor("lm_head/linear0/weight.scale")
        smooth = b.tensor("lm_head/linear0/x.smooth")
    expected = wq[IDS.numpy()] * s[IDS.numpy()][..., None] / smooth
    np.testing.assert_array_equal(out["rows"].numpy(), expected)
    # and close to the float table: int8 rows of W * smooth, divided back
    float_rows = model.transformer.wte.weight.detach().numpy()[IDS.numpy()]
    assert np.abs(expected - float_rows).max() < 0.05 * np.abs(float_rows).max()


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_qlevels_agree_with_int8_tables(quantized, name):
    _, _, path = quantized(name, "W8A8KV8")
    l3, _ = runtime.load(path, qlevel=3, engine="reference").prefill(IDS)
    l4, _ = runtime.load(path, qlevel=4, engine="reference").prefill(IDS)
    l2, _ = runtime.load(path, qlevel=2, engine="reference").prefill(IDS)
    assert torch.equal(l3, l4)
    assert torch.allclose(l2, l4, atol=1e-3, rtol=1e-3)


def test_embedding_dtype_float32_keeps_the_float_table(tiny_models):
    cfg = dataclasses.replace(mcq.preset("W8A16"), embedding_dtype="float32")
    q = mcq.quantize(tiny_models("llama-tiny"), cfg, progress=False)
    assert not _embedding_nodes(q)
    assert "model.embed_tokens.weight" in q.tensors


def test_weight_only_presets_follow_the_weights(tiny_models):
    assert mcq.preset("W4A16").quantizes_embedding and mcq.preset("W8A16").quantizes_embedding
    assert not mcq.preset("W16A16").quantizes_embedding and not mcq.preset("FLOAT").quantizes_embedding
    q = mcq.quantize(tiny_models("gpt2-tiny"), mcq.preset("W4A16"), progress=False)
    # W4A16's lm_head is int8 per channel without smoothing: the tied table shares it as is
    token = _embedding_nodes(q)["transformer.wte/embedding0"]["weight"]
    assert token["shared_with"] == "lm_head/linear0" and "smooth" not in token


def test_lowering_rejects_a_table_format_it_does_not_define():
    from runtime.ir import Graph, Node, TensorRef, TensorSpec, Ref

    graph = Graph("g", [TensorSpec("ids", "int64", ["b", "s"])],
                  [Node("e", "aten.embedding.default", [TensorRef("t"), Ref("ids")], {}, qkey="emb/embedding0")],
                  [("out", Ref("e"))])
    spec = {"dtype": "int4", "nbits": 4, "granularity": "group", "axis": 1, "group_size": 2, "symmetric": True,
            "scale": "t.scale", "zero_point": "t.zp", "shape": [4, 4]}
    qformat = {"nodes": {"emb/embedding0": {"kind": "embedding", "inputs": {}, "weight": spec}}}
    tensors = {"t": torch.zeros(4, 2, dtype=torch.uint8), "t.scale": torch.ones(4, 2), "t.zp": torch.zeros(4, 2)}
    with pytest.raises(lower.LoweringError, match="emb/embedding0"):
        lower.build(graph, tensors.__getitem__, qformat, 4)
