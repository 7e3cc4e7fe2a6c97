"""Tiny random-weight models through capture -> bundle -> runtime (issue: end-to-end path)."""
from __future__ import annotations

import pytest
import torch

import runtime
from runtime.lower import past_input_name

FAMILIES = ["gptj-tiny", "llama-tiny", "gpt2-tiny"]


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 500, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    ids[1, :3] = 2
    return ids, mask


@pytest.mark.parametrize("name", FAMILIES)
def test_float_bundle_prefill_and_decode_equal_eager(name, quantized, hf_reference):
    model, _, path = quantized(name, "FLOAT")
    rt = runtime.load(path)
    assert rt.qlevel == 0
    ids, mask = _batch()
    logits, cache = rt.prefill(ids, mask)
    ref = hf_reference(model, ids, mask)
    assert (logits - ref)[mask.bool()].abs().max() < 1e-5
    nxt = torch.tensor([7, 8, 9])
    step, cache = rt.decode(nxt, cache)
    full_ids = torch.cat([ids, nxt[:, None]], 1)
    full_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    ref = hf_reference(model, full_ids, full_mask)[:, -1]
    assert (step - ref).abs().max() < 1e-5
    assert cache.length == 10 and cache.tensors[0].shape[2] == 10


@pytest.mark.parametrize("name", FAMILIES)
def test_qlevel4_matches_qlevel2_greedy_tokens(name, quantized):
    _, q, path = quantized(name, "W8A8KV8")
    prompts = [[5, 6, 7, 8, 9], [100, 200, 300], [42, 43]]
    sim = q.model(2).generate(prompts, max_new_tokens=16, stop_at_eos=False)
    for level in (3, 4):
        assert runtime.load(path, qlevel=level).generate(prompts, max_new_tokens=16, stop_at_eos=False) == sim


def test_quantized_kv_cache_is_int8_and_decode_keys_match_prefill(quantized):
    _, q, path = quantized("llama-tiny", "W8A8KV8")
    rt = runtime.load(path, qlevel=4, engine="reference")
    _, cache = rt.prefill(torch.tensor([[5, 6, 7, 8]]))
    assert all(t.dtype == torch.int8 for t in cache.tensors)
    qkeys = {g: {n["qkey"] for n in q.sections[f"graph/{g}"]["nodes"] if "qkey" in n} for g in ("prefill", "decode")}
    assert qkeys["prefill"] == qkeys["decode"]
    quantized_keys = set(q.sections["qformat"]["nodes"])
    assert quantized_keys and quantized_keys <= qkeys["decode"]
    assert [i["name"] for i in q.sections["graph/decode"]["inputs"]][2] == past_input_name(0, 0)



def test_kv_cache_grows_in_place_in_its_reserved_buffers_and_branches_copy(quantized):
    _, _, path = quantized("llama-tiny", "W8A8KV8")
    rt = runtime.load(path, qlevel=4, engine="reference")
    ids, mask = _batch()
    _, plain = rt.prefill(ids, mask)  # no reserve: the first decode step reallocates
    logits, cache = rt.prefill(ids, mask, reserve=4)
    assert cache.capacity == 13 and cache.length == 9
    pointers = [t.data_ptr() for t in cache.tensors]
    steps, caches, tok = [], [cache], logits[:, -1].argmax(-1)
    for _ in range(4):
        step, cache = rt.decode(tok, cache)
        steps.append(step)
        caches.append(cache)
        tok = step.argmax(-1)
    assert [t.data_ptr() for t in cache.tensors] == pointers  # written in place, no copy
    assert cache.length == 13 and cache.attention_mask.shape == (3, 13)
    # the same steps through a cache without room (reallocated, then doubled) give the same values
    tok = logits[:, -1].argmax(-1)
    for want, earlier in zip(steps, caches[1:]):
        step, plain = rt.decode(tok, plain)
        assert torch.equal(step, want)
        assert all(torch.equal(a, b) for a, b in zip(plain.tensors, earlier.tensors))
        tok = step.argmax(-1)
    # a branch from an earlier cache leaves the later caches as they were
    later = [t.clone() for t in caches[2].tensors]
    branch_step, branch = rt.decode(torch.tensor([1, 2, 3]), caches[1])
    assert all(torch.equal(a, b) for a, b in zip(caches[2].tensors, later))
    assert branch.length == 11 and not torch.equal(branch.tensors[0], caches[2].tensors[0])

@pytest.mark.parametrize("name", FAMILIES)
def test_qlevel3_and_qlevel4_are_bit_identical_and_close_to_qlevel2(name, quantized):
    _, q, _ = quantized(name, "W8A8KV8")
    ids, mask = _batch()
    l2, _ = q.model(2).prefill(ids, mask)
    l3, c3 = q.model(3).prefill(ids, mask)
    l4, c4 = q.model(4).prefill(ids, mask)
    assert torch.equal(l3, l4)
    assert all(torch.equal(a, b) for a, b in zip(c3.tensors, c4.tensors))
    d3, _ = q.model(3).decode(torch.tensor([7, 8, 9]), c3)
    d4, _ = q.model(4).decode(torch.tensor([7, 8, 9]), c4)
    assert torch.equal(d3, d4)
    # qlevel 2 rounds in float32 matmuls: an occasional requantization step may differ by one LSB
    assert (l2 - l4)[mask.bool()].abs().max() < 1e-2 * l2.abs().max()


def test_quantized_bundle_stores_int8_weights(quantized):
    import mcq_format

    _, _, path = quantized("gptj-tiny", "W8A8KV8")
    with mcq_format.read(path) as b:
        weights = [n for n in b.tensor_names() if n.endswith("/weight")]
        assert weights and all(b.tensor_info(n).dtype == "I8" for n in weights)


def test_same_inputs_give_byte_identical_bundles_with_or_without_progress(tiny_models, tmp_path, capsys):
    """Every long step (export, calibration, storing) reports on stderr unless progress=False."""
    import mcq

    model = tiny_models("llama-tiny")
    steps = ["capturing: exporting prefill", "capturing: decomposing decode", "calibrating", "storing parameters",
             "writing float tensors"]
    for i in range(2):
        mcq.quantize(model, mcq.preset("W8A8KV8"), progress=i == 0).save(tmp_path / f"{i}.mcq")
        err = capsys.readouterr().err
        assert [s for s in steps if s in err] == (steps if i == 0 else []), err[-2000:]
    assert (tmp_path / "0.mcq").read_bytes() == (tmp_path / "1.mcq").read_bytes()


def test_sampling_is_seeded(quantized):
    _, _, path = quantized("gpt2-tiny", "W8A8KV8")
    rt = runtime.load(path)
    a = rt.generate([5, 6, 7], max_new_tokens=12, do_sample=True, top_k=50, top_p=0.9, seed=1, stop_at_eos=False)
    b = rt.generate([5, 6, 7], max_new_tokens=12, do_sample=True, top_k=50, top_p=0.9, seed=1, stop_at_eos=False)
    c = rt.generate([5, 6, 7], max_new_tokens=12, do_sample=True, top_k=50, top_p=0.9, seed=2, stop_at_eos=False)
    assert a == b and a != c and len(a) == 12


def test_single_token_prompt_is_left_padded(quantized):
    _, _, path = quantized("gptj-tiny", "FLOAT")
    rt = runtime.load(path)
    assert len(rt.generate([5], max_new_tokens=4, stop_at_eos=False)) == 4


def test_smoothquant_auto_shares_vectors_and_keeps_qlevels_in_agreement(tiny_models):
    import mcq

    q = mcq.quantize(tiny_models("llama-tiny"), mcq.QuantConfig(smoothquant=True, smoothquant_alpha="auto"),
                     progress=False)
    nodes = q.sections["qformat"]["nodes"]
    qkv = [nodes[f"model.layers.0.self_attn.{p}_proj/linear0"]["inputs"]["x"] for p in "qkv"]
    assert all(s["smooth"] for s in qkv)
    vecs = [q.tensors[s["smooth"]] for s in qkv]
    assert torch.equal(vecs[0], vecs[1]) and torch.equal(vecs[0], vecs[2])
    assert not torch.equal(vecs[0], torch.ones_like(vecs[0]))
    scales = {float(q.tensors[s["scale"]]) for s in qkv}
    assert len(scales) == 1  # one tensor, one quantizer
    prompts = [[5, 6, 7, 8, 9], [100, 200, 300]]
    sim = q.model(2).generate(prompts, max_new_tokens=12, stop_at_eos=False)
    assert q.model(4).generate(prompts, max_new_tokens=12, stop_at_eos=False) == sim


def test_outlier_channels_leave_the_integer_gemm(tiny_models):
    import mcq

    model = tiny_models("llama-tiny")
    q = mcq.quantize(model, mcq.QuantConfig(smoothquant=True, act_outlier_threshold=1.5), progress=False)
    key = "model.layers.0.mlp.down_proj/linear0"
    entry = q.sections["qformat"]["nodes"][key]
    idx = q.tensors[entry["inputs"]["x"]["outliers"]]
    assert 1 <= idx.numel() <= 1  # capped at 1 % of 128 channels -> 1
    wq = q.tensors[f"{key}/weight"]
    assert torch.count_nonzero(wq[:, idx]) == 0
    original = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(q.tensors[entry["outlier_weight"]], original[:, idx])
    smooth = q.tensors[entry["inputs"]["x"]["smooth"]]
    assert torch.all(smooth[idx] == 1.0)
    prompts = [[5, 6, 7, 8, 9], [100, 200, 300]]
    sim = q.model(2).generate(prompts, max_new_tokens=12, stop_at_eos=False)
    assert q.model(3).generate(prompts, max_new_tokens=12, stop_at_eos=False) == sim
    assert q.model(4).generate(prompts, max_new_tokens=12, stop_at_eos=False) == sim


def test_mixed_precision_bundle_runs_at_every_qlevel(tiny_models, tmp_path):
    import mcq

    cfg = mcq.QuantConfig.from_dict({"preset": "W8A8KV8", "overrides": [
        {"match": "lm_head/*", "weight_dtype": "float32", "act_dtype": "float32"},
        {"match": "*.mlp.*", "kind": "linear", "act_dtype": "float32"},
    ]})
    q = mcq.quantize(tiny_models("gptj-tiny"), cfg, progress=False)
    q.save(tmp_path / "mixed.mcq")
    rt = runtime.load(tmp_path / "mixed.mcq", qlevel=3)
    # the file's overrides follow the preset's (later wins)
    assert [o["match"] for o in rt.manifest["quant"]["overrides"]][-2:] == ["lm_head/*", "*.mlp.*"]
    prompts = [[5, 6, 7, 8, 9], [100, 200, 300]]
    sim = q.model(2).generate(prompts, max_new_tokens=12, stop_at_eos=False)
    assert rt.generate(prompts, max_new_tokens=12, stop_at_eos=False) == sim
    # qlevel 4 runs the weight-only MLP linears on bf16 kernels (spec Q.4a): close, not equal
    # (random tiny weights leave near-tied logits, so its greedy tokens may part from qlevel 3's)
    ids, mask = _batch()
    logits3 = rt.prefill(ids, mask)[0]
    logits4 = runtime.load(tmp_path / "mixed.mcq", qlevel=4).prefill(ids, mask)[0]
    assert 0 < (logits3 - logits4).abs().max() < 0.05


@pytest.mark.parametrize("method", ["PERCENTILE_ASYM", "ENTROPY_SYM", "MSE_SYM"])
def test_histogram_methods_with_smoothing_give_tighter_ranges(quantized, method):
    import mcq

    model, base, _ = quantized("llama-tiny", "W8A8KV8")
    cfg = mcq.QuantConfig.from_dict({"preset": "W8A8KV8", "act_calib_method": method, "percentile": 99.0})
    q = mcq.quantize(model, cfg, progress=False)
    key = "model.layers.0.mlp.down_proj/linear0"
    spec, base_spec = q.sections["qformat"]["nodes"][key]["inputs"]["x"], base.sections["qformat"]["nodes"][key]["inputs"]["x"]
    assert spec["method"] == method
    assert float(q.tensors[spec["scale"]]) < float(base.tensors[base_spec["scale"]])
    ids, mask = _batch()
    assert torch.equal(q.model(3).prefill(ids, mask)[0], q.model(4).prefill(ids, mask)[0])


def test_unimplemented_quant_format_is_refused_not_approximated(quantized):
    import copy

    from runtime import lower

    _, q, _ = quantized("gptj-tiny", "W8A8KV8")
    sections = copy.deepcopy(q.sections)
    spec = sections["qformat"]["nodes"]["lm_head/linear0"]["weight"]
    spec["dtype"], spec["nbits"] = "nf4", 4  # a format id this runtime does not know
    from runtime.ir import Graph

    with pytest.raises(lower.LoweringError, match="'nf4' with 4 bits is not implemented"):
        lower.build(Graph.decode(sections["graph/prefill"]), q.tensors.__getitem__, sections["qformat"], 4)


@pytest.mark.parametrize("preset,level", [("W8A8KV8", 4), ("W8A8KV8", 2), ("W8A16", 4), ("FLOAT", 0)])
def test_last_position_prefill_equals_the_last_row_of_full_prefill(quantized, preset, level):
    """generate's prefill variant runs the vocabulary projection on the last position only: the
    same KV cache and the same logits row, bit for bit where the projection is an integer kernel
    (qlevel 4); a float GEMM of one row may round differently from a GEMM of many (qlevels 0, 2)."""
    _, _, path = quantized("llama-tiny", preset)
    m = runtime.load(path, level, engine="reference")
    ids, mask = _batch()
    full, full_cache = m.prefill(ids, mask)
    last, last_cache = m.prefill(ids, mask, all_logits=False)
    assert full.shape == (*ids.shape, 512) and last.shape == (ids.shape[0], 1, 512)
    if level == 4:
        assert torch.equal(last, full[:, -1:])
    else:
        torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(full_cache.tensors, last_cache.tensors))


def test_output_mse_range_search_narrows_static_input_ranges_only_where_asked(quantized, tiny_models):
    import mcq
    from mcq.channels import ACT_CLIP_FINE

    model, base, _ = quantized("llama-tiny", "W8A8KV8")
    cfg = mcq.QuantConfig.from_dict({"preset": "W8A8KV8", "overrides": [
        {"match": "*.layers.0.*", "kind": "linear", "act_range_search": "output_mse"}]})
    q = mcq.quantize(model, cfg, progress=False)
    nodes, base_nodes = q.sections["qformat"]["nodes"], base.sections["qformat"]["nodes"]
    ratios = {}
    for key, entry in nodes.items():
        if entry["kind"] != "linear" or "x" not in entry["inputs"]:
            continue
        scale = float(q.tensors[entry["inputs"]["x"]["scale"]])
        base_scale = float(base.tensors[base_nodes[key]["inputs"]["x"]["scale"]])
        ratios[key] = scale / base_scale
    searched = {k: r for k, r in ratios.items() if ".layers.0." in k}
    assert searched and all(r == 1.0 for k, r in ratios.items() if k not in searched)
    # a factor of the grid (0.5 .. 1.0 in steps of 0.01), shared by the linears reading one tensor
    assert all(0.5 - 1e-6 <= r <= 1.0 + 1e-6 for r in searched.values())
    assert all(abs(r / ACT_CLIP_FINE - round(r / ACT_CLIP_FINE)) < 1e-3 for r in searched.values())
    qkv = {round(searched[f"model.layers.0.self_attn.{p}_proj/linear0"], 6) for p in "qkv"}
    assert len(qkv) == 1
    assert any(r < 1.0 for r in searched.values())
    again = mcq.quantize(model, cfg, progress=False)  # deterministic: the same tensors, bit for bit
    assert all(torch.equal(again.tensors[k], t) for k, t in q.tensors.items())
    ids, mask = _batch()
    assert torch.equal(q.model(3).prefill(ids, mask)[0], q.model(4).prefill(ids, mask)[0])
