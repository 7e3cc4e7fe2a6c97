"""Encoders (tiny random BERT) and generic nn.Modules through capture -> bundle -> runtime
(issue 4: architectures)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.export import Dim

import mcq
import runtime
from mcq.evaluate import cosines, reference_embeddings

TEXTS = ["The river delta is one of the most productive landscapes on Earth.",
         "Mountains shape the weather.",
         "A rain shadow is the dry side of a range, only a short drive away from dense forest."]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """bert-tiny with its WordPiece tokenizer: (model, tokenizer, FLOAT path, W8A8 Quantized, W8A8 path)."""
    from mcq.examples import load_example

    model, tok = load_example("bert-tiny")
    captured = mcq.capture_model(model)
    folder = tmp_path_factory.mktemp("bert")
    paths = {}
    for preset in ("FLOAT", "W8A8"):
        q = mcq.quantize(captured, mcq.preset(preset), tokenizer=tok, progress=False)
        paths[preset] = folder / f"bert-tiny-{preset}.mcq"
        q.save(paths[preset])
    return model, tok, paths["FLOAT"], q, paths["W8A8"]


def _padded_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 500, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_float_bundle_equals_eager_hf_with_padding(bert):
    model, _, path, _, _ = bert
    rt = runtime.load(path)
    assert rt.qlevel == 0 and rt.entry_points == ["forward"]
    ids, mask = _padded_batch()
    hidden, emb = rt(ids, mask)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert hidden.shape == (3, 11, 64) and emb.shape == (3, 64)
    assert (hidden - ref)[mask.bool()].abs().max() < 1e-5
    m = mask.unsqueeze(-1).float()
    ref_emb = torch.nn.functional.normalize((ref * m).sum(1) / m.sum(1), dim=1)
    assert (emb - ref_emb).abs().max() < 1e-5
    # the padded rows do not change a sequence's result: row 2 alone, unpadded
    alone_hidden, alone_emb = rt.run("forward", ids[2:, :4], mask[2:, :4])
    assert (alone_emb[0] - emb[2]).abs().max() < 1e-5
    assert (alone_hidden[0] - hidden[2, :4]).abs().max() < 1e-5


def test_embed_tokenizes_with_the_bundled_tokenizer(bert):
    model, tok, path, _, _ = bert
    rt = runtime.load(path)
    emb = rt.embed(TEXTS, batch_size=2)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (emb - reference_embeddings(model, tok, TEXTS)).abs().max() < 1e-5
    assert torch.equal(rt.embed(TEXTS[1]), rt.embed([TEXTS[1]]))
    assert (rt.embed(TEXTS[1])[0] - emb[1]).abs().max() < 1e-5


def test_w8a8_qlevel3_and_4_bit_identical_and_close_to_qlevel2(bert):
    _, _, _, q, path = bert
    nodes = q.sections["qformat"]["nodes"]
    linears = [e for e in nodes.values() if e["kind"] == "linear"]
    assert len(linears) == 12 and all(e["inputs"]["x"] for e in linears)
    # word, position and token-type tables: int8 rows
    assert sorted(k for k, e in nodes.items() if e["kind"] == "embedding") == [
        "embeddings.position_embeddings/embedding0", "embeddings.token_type_embeddings/embedding0",
        "embeddings.word_embeddings/embedding0"]
    ids, mask = _padded_batch()
    h2, e2 = runtime.load(path, qlevel=2, engine="reference")(ids, mask)
    h3, e3 = runtime.load(path, qlevel=3, engine="reference")(ids, mask)
    h4, e4 = runtime.load(path, qlevel=4, engine="reference")(ids, mask)
    assert torch.equal(h3, h4) and torch.equal(e3, e4)
    assert (h2 - h4)[mask.bool()].abs().max() < 1e-2 * h2.abs().max()
    assert cosines(e2, e4).min() > 0.999
    texts = runtime.load(path, qlevel=4, engine="reference").embed(TEXTS)
    assert torch.equal(texts, runtime.load(path, qlevel=3, engine="reference").embed(TEXTS))


def test_encoder_bundle_manifest_and_clear_errors(bert, quantized):
    _, _, path, q, _ = bert
    rt = runtime.load(path, qlevel=4)
    man = rt.manifest
    assert "kv_cache" not in man and man["model"]["family"] == "bert"
    assert [o["name"] for o in man["entry_points"]["forward"]["outputs"]] == ["last_hidden_state", "sentence_embedding"]
    assert man["entry_points"]["forward"]["outputs"][1]["shape"] == ["batch", 64]
    with pytest.raises(runtime.EntryPointError, match="no 'prefill' entry point.*'forward'"):
        rt.prefill(torch.tensor([[5, 6, 7]]))
    with pytest.raises(runtime.EntryPointError, match="'prefill'"):
        rt.generate("hello")
    with pytest.raises(runtime.EntryPointError, match="'decode'"):
        rt.decode(torch.tensor([5]), runtime.KVCache([], torch.ones(1, 2, dtype=torch.long)))
    with pytest.raises(runtime.EntryPointError, match="'nope'"):
        rt.run("nope")
    with pytest.raises(ValueError, match="input 'input_ids' has shape \\[4\\]"):
        rt(torch.tensor([1, 2, 3, 4]), torch.ones(4))
    with pytest.raises(TypeError, match="missing input"):
        rt(torch.tensor([[1, 2, 3, 4]]))
    _, _, lm_path = quantized("gpt2-tiny", "W8A8KV8")
    with pytest.raises(runtime.EntryPointError, match="sentence_embedding"):
        runtime.load(lm_path).embed("hello")


def test_encoder_without_tokenizer_calibrates_on_random_tokens(quantized):
    _, q, path = quantized("bert-tiny", "W8A8")
    rt = runtime.load(path)
    assert rt.tokenizer is None and len(q.sections["qformat"]["nodes"]) == 12 + 3 + 2  # linears, tables, Q.K^T
    with pytest.raises(ValueError, match="no tokenizer"):
        rt.embed("hello")
    ids, mask = _padded_batch()
    assert rt(ids, mask)[1].shape == (3, 64)
    model = quantized("bert-tiny", "W8A8")[0]
    with pytest.raises(mcq.ConfigError, match="causal LMs only"):  # the search measures perplexity
        mcq.quantize(model, mcq.QuantConfig.from_dict({"preset": "W8A8", "auto_max_fraction": 0.1}), progress=False)


# -- generic modules ------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention written with torch.matmul (bmm after export) and a key mask."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(x).split(d, dim=-1))
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = att.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)
        return self.out(torch.matmul(att, v).transpose(1, 2).reshape(b, t, d))


class Net(nn.Module):
    """An MLP around an attention block; returns a tuple with a dict inside."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.attn, self.head = nn.Linear(10, 32), Attention(), nn.Linear(32, 3)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        h = self.inp(x)
        h = h + self.attn(h, mask)
        h = h + self.mlp(h)
        return self.head(h), {"pooled": h.mean(1)}


def _net_inputs(batch: int, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, 10, generator=g)
    mask = torch.ones(batch, steps, dtype=torch.long)
    mask[0, steps // 2:] = 0
    return x, mask


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = Net().eval()
    batch, steps = Dim("batch", min=1, max=64), Dim("steps", min=2, max=128)
    captured = mcq.capture_model(model, example_inputs=_net_inputs(2, 6, 0),
                                 dynamic_shapes={"x": {0: batch, 1: steps}, "mask": {0: batch, 1: steps}})
    return model, captured


def test_generic_module_graph_names_and_quant_points(net):
    _, captured = net
    g = captured.graphs["forward"]
    assert [(i.name, i.dtype, i.shape) for i in g.inputs] == [("x", "float32", ["batch", "steps", 10]),
                                                              ("mask", "int64", ["batch", "steps"])]
    assert [o for o, _ in g.outputs] == ["output.0", "output.1.pooled"]
    qkeys = [n.qkey for n in g.nodes if n.qkey]
    assert qkeys == ["inp/linear0", "attn.qkv/linear0", "attn/bmm0", "attn/bmm1", "attn.out/linear0",
                     "mlp.0/linear0", "mlp.2/linear0", "head/linear0"]


def test_generic_module_roundtrips_through_save_load_run(net, tmp_path):
    model, captured = net
    mcq.quantize(captured, mcq.preset("FLOAT"), progress=False).save(tmp_path / "net.mcq")
    rt = runtime.load(tmp_path / "net.mcq")
    x, mask = _net_inputs(4, 9, 1)  # other sizes than the example's
    with torch.no_grad():
        ref_out, ref_dict = model(x, mask)
    out, pooled = rt(x, mask)
    assert (out - ref_out).abs().max() < 1e-5 and (pooled - ref_dict["pooled"]).abs().max() < 1e-5
    out_kw, _ = rt.run("forward", mask=mask, x=x)
    assert torch.equal(out_kw, out)
    assert [o["shape"] for o in rt.manifest["entry_points"]["forward"]["outputs"]] == [["batch", "steps", 3],
                                                                                      ["batch", 32]]


def test_generic_module_w8a8_qlevels(net, tmp_path):
    model, captured = net
    samples = [_net_inputs(3, 7, s) for s in range(4)]
    q = mcq.quantize(captured, mcq.preset("W8A8"), samples=samples, progress=False)
    nodes = q.sections["qformat"]["nodes"]
    # the 6 linears and Q.K^T (the bmm feeding the softmax: both operands int8, per tensor);
    # P.V keeps the float softmax
    assert len(nodes) == 7 and nodes["attn/bmm0"]["kind"] == "bmm" and "attn/bmm1" not in nodes
    assert set(nodes["attn/bmm0"]["inputs"]) == {"a", "b"}
    q.save(tmp_path / "net8.mcq")
    x, mask = _net_inputs(2, 5, 9)
    outs = {level: runtime.load(tmp_path / "net8.mcq", qlevel=level, engine="reference")(x, mask) for level in (2, 3, 4)}
    assert all(torch.equal(a, b) for a, b in zip(outs[3], outs[4]))
    assert (outs[2][0] - outs[4][0]).abs().max() < 1e-2 * outs[2][0].abs().max()
    with torch.no_grad():
        ref = model(x, mask)[0]
    assert (outs[4][0] - ref).abs().max() < 0.1 * ref.abs().max()


def test_quantize_a_module_directly_with_keyword_samples():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x, extra=(None, None), scale=None):
            y = self.fc(x) + extra[0]
            return y if scale is None else y * scale

    torch.manual_seed(0)
    module = Pair().eval()
    x, e = torch.randn(2, 8), torch.randn(2, 8)
    q = mcq.quantize(module, mcq.QuantConfig(), example_inputs={"x": x, "extra": (e, None)},
                     samples=[{"x": torch.randn(2, 8), "extra": (torch.randn(2, 8), None)} for _ in range(3)],
                     progress=False)
    g = q.sections["graph/forward"]
    assert [i["name"] for i in g["inputs"]] == ["x", "extra.0"] and [o["name"] for o in g["outputs"]] == ["output"]
    rt = q.model(4)
    with torch.no_grad():
        ref = module(x, (e, None))
    assert (rt(x, e) - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.equal(rt(x, e), q.model(3)(x, e))
    with pytest.raises(mcq.capture.CaptureError, match="input 'x' has shape \\[3, 8\\].*dynamic_shapes"):
        mcq.quantize(module, mcq.QuantConfig(), example_inputs=(x, (e, None)),
                     samples=[(torch.randn(3, 8), (torch.randn(3, 8), None))], progress=False)
    with pytest.raises(mcq.capture.CaptureError, match="example_inputs"):
        mcq.capture_model(module)


def test_cli_quantizes_inspects_and_refuses_generate_on_an_encoder(tmp_path):
    import json

    from click.testing import CliRunner

    from mcq.cli import main

    out = tmp_path / "bert.mcq"
    r = CliRunner().invoke(main, ["quantize", "--example", "bert-tiny", "--preset", "W8A8", "--samples", "8",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    report = json.loads(r.output)
    assert report["family"] == "bert" and report["kv_cache"] is None
    assert report["entry_points"]["forward"]["outputs"] == ["last_hidden_state", "sentence_embedding"]
    assert report["quantized_nodes"] == {"linear:int8": 12, "embedding:int8": 3, "bmm:int8": 2}
    assert "entry point forward" in CliRunner().invoke(main, ["inspect", str(out)]).output
    r = CliRunner().invoke(main, ["generate", str(out), "--prompt", "hello"])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "'prefill'" in r.output
    emb = runtime.load(out).embed(TEXTS)
    assert emb.shape == (3, 64)


def test_encoder_attention_scores_run_as_int8_bmm(tiny_models, tmp_path):
    """BERT: the Q.K^T product of every layer is an int8 quant point with its own per-tensor key
    scale (no KV cache to share one with); qlevels 3 and 4 agree bit for bit."""
    from runtime.quant_modules import QBmm

    q = mcq.quantize(tiny_models("bert-tiny"), mcq.preset("W8A8"), progress=False)
    bmm = {k: v for k, v in q.sections["qformat"]["nodes"].items() if v["kind"] == "bmm"}
    assert sorted(bmm) == [f"encoder.layer.{i}.attention.self/bmm0" for i in range(2)]
    for entry in bmm.values():
        assert entry["inputs"]["b"]["granularity"] == "tensor" and "source" not in entry["inputs"]["b"]
    q.save(tmp_path / "bert8.mcq")
    m3, m4 = (runtime.load(tmp_path / "bert8.mcq", qlevel=level, engine="reference") for level in (3, 4))
    assert sum(isinstance(mod, QBmm) for mod in m4._module("forward").modules()) == 2
    ids = torch.randint(5, 500, (2, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    assert all(torch.equal(a, b) for a, b in zip(m3.run("forward", ids, mask), m4.run("forward", ids, mask)))


def test_the_tokenizer_is_parsed_at_first_use_and_a_bad_document_names_its_section():
    from runtime.tokenizer import Tokenizer

    bad = Tokenizer({"kind": "hf-tokenizers-json", "json": "{not json"})  # structure checked at load
    with pytest.raises(ValueError, match="tokenizer section: not a tokenizers document"):
        bad.encode("hello")
    with pytest.raises(ValueError, match="tokenizer section: tokenizer kind 'sentencepiece'"):
        Tokenizer({"kind": "sentencepiece"})
