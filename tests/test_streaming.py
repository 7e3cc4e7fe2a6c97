"""Streaming quantization (issue 6): a causal LM read from a sharded safetensors checkpoint,
captured on the meta device, calibrated node by node and written tensor by tensor gives the
bundle in-memory quantization gives, byte for byte; the runtime maps its weights, never copies."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

import mcq
import mcq_format
import runtime
from mcq.examples import load_example, load_model_dir

SHARD = "100KB"  # tiny models still get several shards


def save_checkpoint(model, tok, folder):
    model.save_pretrained(folder, max_shard_size=SHARD)
    if tok is not None:
        tok.save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """name -> folder with the example's random weights as sharded safetensors (+ its tokenizer)."""
    cache = {}

    def get(name):
        if name not in cache:
            model, tok = load_example(name)
            cache[name] = save_checkpoint(model, tok, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def qparam_names(bundle):
    """Every scale / zero-point tensor the qformat names."""
    names = []
    for entry in bundle.sections["qformat"]["nodes"].values():
        for spec in [entry.get("weight") or {}, *entry["inputs"].values()]:
            names += [spec[k] for k in ("scale", "zero_point") if spec.get(k)]
    return names


def assert_same_bundle(a, b):
    with mcq_format.read(a) as x, mcq_format.read(b) as y:
        names = qparam_names(x)
        assert names and names == qparam_names(y)
        for n in names:  # every scale and zero point, exactly
            assert np.array_equal(x.tensor(n), y.tensor(n)), n
        assert x.tensor_names() == y.tensor_names()
        for n in x.tensor_names():
            assert np.array_equal(x.tensor(n), y.tensor(n)), n
        assert x.sections == y.sections
    assert a.read_bytes() == b.read_bytes()


CONFIGS = {
    "W8A8KV8": mcq.preset("W8A8KV8"),  # SmoothQuant, outlier channels, GPTQ with shared Hessians
    # int4 groups, zero points, GPTQ on weight-only linears (streaming has no sequential GPTQ)
    "W4A16": dataclasses.replace(mcq.preset("W4A16"), gptq_sequential=False),
    "W8A16": mcq.preset("W8A16"),  # nothing to observe: no calibration pass at all
    # histograms of the smoothed inputs (the in-memory path's second pass), per-node methods
    "histograms": mcq.QuantConfig.from_dict({
        "preset": "W8A8KV8", "act_outlier_threshold": 4.0,
        "overrides": [{"match": "*mlp*", "kind": "linear", "act_calib_method": "PERCENTILE_ASYM"},
                      {"match": "*o_proj*", "kind": "linear", "act_calib_method": "ENTROPY_SYM"}]}),
    # rotated inputs: ranges from the transformed pass, rotation factors written once per width
    "rotation": dataclasses.replace(mcq.preset("W8A8KV8"), act_rotation=True),
    # the SmoothQuant alpha searched per group on the inputs at hand, before its weights are quantized
    "auto alpha": mcq.QuantConfig(smoothquant=True, smoothquant_alpha="auto", act_outlier_threshold=4.0, gptq=True),
}


@pytest.mark.parametrize("name,config", [("gptj-tiny", "W8A8KV8"), ("llama-tiny", "histograms"),
                                         ("gpt2-tiny", "W4A16"), ("llama-tiny", "W8A16"),
                                         ("llama-tiny", "rotation"), ("gptj-tiny", "auto alpha")])
def test_streamed_bundle_equals_in_memory_bundle(name, config, checkpoint, tmp_path):
    folder = checkpoint(name)
    cfg = CONFIGS[config]
    model, tok = load_model_dir(folder)  # what `mcq quantize MODEL_DIR` does in memory
    mcq.quantize(model, cfg, tokenizer=tok, max_samples=6, seq_len=32, progress=False).save(tmp_path / "mem.mcq")
    out = mcq.quantize_streaming(folder, tmp_path / "stream.mcq", cfg, max_samples=6, seq_len=32, progress=False)
    assert out == tmp_path / "stream.mcq"
    assert sorted(os.listdir(tmp_path)) == ["mem.mcq", "stream.mcq"]  # no spool left behind
    assert_same_bundle(tmp_path / "mem.mcq", tmp_path / "stream.mcq")


def test_streaming_holds_one_block_of_weights_at_a_time(tmp_path, monkeypatch):
    """Six layers: at no point are the weights of two transformer blocks in memory together,
    and the largest resident set is far below the model."""
    from transformers import AutoModelForCausalLM, GPTJConfig

    from mcq import pipeline

    torch.manual_seed(0)
    cfg = GPTJConfig(vocab_size=512, n_embd=64, n_layer=6, n_head=4, rotary_dim=8, n_positions=64,
                     bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    folder = save_checkpoint(model, None, tmp_path / "ckpt")
    total = sum(p.numel() * 4 for p in model.parameters())
    peak = {"bytes": 0, "blocks": 0}
    get = pipeline.Resident.get

    def tracked(self, name):
        t = get(self, name)
        blocks = {n.split(".")[2] for n in self.tensors if n.startswith("transformer.h.")}
        peak["blocks"] = max(peak["blocks"], len(blocks))
        peak["bytes"] = max(peak["bytes"], sum(v.numel() * v.element_size() for v in self.tensors.values()))
        return t

    monkeypatch.setattr(pipeline.Resident, "get", tracked)
    mcq.quantize_streaming(folder, tmp_path / "m.mcq", mcq.preset("W8A8KV8"), max_samples=4, seq_len=16,
                           progress=False)
    assert peak["blocks"] == 1
    assert 0 < peak["bytes"] < total / 4
    with mcq_format.read(tmp_path / "m.mcq") as b:
        assert b.tensor("transformer.h.5.mlp.fc_out/linear0/weight").dtype == np.int8


def test_streaming_errors_name_the_problem(checkpoint, tmp_path):
    from mcq.config import ConfigError

    with pytest.raises(FileNotFoundError, match="no safetensors checkpoint"):
        mcq.quantize_streaming(tmp_path, tmp_path / "x.mcq")
    folder = checkpoint("llama-tiny")
    with pytest.raises(ConfigError, match="automatic mixed precision"):
        mcq.quantize_streaming(folder, tmp_path / "x.mcq", mcq.QuantConfig(auto_max_fraction=0.1))
    with pytest.raises(ConfigError, match="set gptq_sequential: false"):
        mcq.quantize_streaming(folder, tmp_path / "x.mcq", mcq.preset("W4A16"))
    with pytest.raises(ConfigError, match="init_process_group"):
        mcq.quantize_streaming(folder, tmp_path / "x.mcq", distributed=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    next(broken.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="model-00002"):
        mcq.quantize_streaming(broken, tmp_path / "x.mcq")
    assert not (tmp_path / "x.mcq").exists()


def test_cli_stream_writes_the_in_memory_bundle(checkpoint, tmp_path):
    from click.testing import CliRunner

    from mcq.cli import main

    folder = checkpoint("gptj-tiny")
    args = ["quantize", str(folder), "--preset", "W8A8KV8", "--samples", "4", "--seq-len", "32"]
    runner = CliRunner()
    r = runner.invoke(main, [*args, "--stream", "-o", str(tmp_path / "s.mcq")])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    assert runner.invoke(main, [*args, "-o", str(tmp_path / "m.mcq")]).exit_code == 0
    assert (tmp_path / "s.mcq").read_bytes() == (tmp_path / "m.mcq").read_bytes()
    r = runner.invoke(main, ["quantize", "--example", "gptj-tiny", "--stream", "-o", str(tmp_path / "e.mcq")])
    assert r.exit_code == 2 and "--stream reads a MODEL_DIR" in r.output


def test_runtime_maps_weights_and_never_copies_them(quantized):
    """Every stored weight a lowered graph holds (int8 and float) is a view of the file's memory
    map, at load and after generating: a bundle larger than half of RAM fits."""
    _, _, path = quantized("llama-tiny", "W8A8KV8")
    model = runtime.load(path, qlevel=4, engine="reference")
    mapped = model.bundle._container._mmap
    lo, hi = mapped.ctypes.data, mapped.ctypes.data + mapped.nbytes

    def weights():
        from runtime.quant_modules import QEmbedding, QLinear

        for gm in model._built.values():
            for m in gm.modules():
                if isinstance(m, QLinear):
                    yield m.weight_q
                if isinstance(m, QEmbedding):  # the int8 token table: rows dequantized per lookup
                    yield m.table_q
            for name, b in gm.named_buffers():
                if b.numel() > 1000:  # float tensors read as they are
                    yield b

    def all_mapped():
        found = list(weights())
        assert sum(t.dtype == torch.int8 for t in found) > 2 * 7  # linears of both graphs, and the table
        return all(lo <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= hi for t in found)

    assert all_mapped()
    model.generate([5, 6, 7], max_new_tokens=4)
    assert all_mapped()
