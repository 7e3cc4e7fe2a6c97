"""Rotated linear inputs (`act_rotation`, spec Q.2 granularity rotated_tensor)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mcq import rotation
from runtime import numerics


@pytest.mark.parametrize("n", [64, 96, 576, 1536])
def test_rotation_factors_are_orthogonal_and_the_same_every_time(n):
    a, b = rotation.factors(n)
    assert a.shape[0] * b.shape[0] == n and b.shape[0] & (b.shape[0] - 1) == 0  # b: a power of two
    assert torch.equal(a, torch.eye(a.shape[0]))  # block-diagonal: the reader skips A
    assert torch.allclose(b.abs() * b.shape[0] ** 0.5, torch.ones_like(b))  # a Hadamard matrix
    r = rotation.matrix((a, b))
    assert (r @ r.t() - torch.eye(n, dtype=torch.float64)).abs().max() < 1e-6
    a2, b2 = rotation.factors(n)
    assert torch.equal(a, a2) and torch.equal(b, b2)


def test_rotate_is_the_kronecker_product_and_unrotate_inverts_it():
    g = torch.Generator().manual_seed(3)
    a = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]  # the spec allows any orthogonal A
    b = rotation.factors(32)[1]
    x = torch.randn(2, 5, 96, generator=torch.Generator().manual_seed(0))
    y = numerics.rotate(x, (a, b))
    full = x.to(torch.float64) @ rotation.matrix((a, b)).t()
    assert (y - full).abs().max() < 1e-5
    assert (numerics.unrotate(y, (a, b)) - x).abs().max() < 1e-5


def _spread_input(gen: torch.Generator) -> torch.Tensor:
    # channels whose ranges differ 100x (what smoothing leaves of an MLP input), no outliers
    scales = torch.logspace(0, 2, 128)[torch.randperm(128, generator=gen)]
    return torch.randn(256, 128, generator=gen) * scales


def test_rotation_lowers_the_error_of_a_per_tensor_int8_linear():
    from mcq.observers import range_to_qparams

    gen = torch.Generator().manual_seed(1)
    x, w = _spread_input(gen), torch.randn(32, 128, generator=gen)
    ref = x @ w.t()
    errors = {}
    for rot in (None, rotation.factors(128)):
        xr = numerics.rotate(x, rot) if rot is not None else x
        wr = numerics.rotate(w, rot) if rot is not None else w  # each row w -> R w
        scale, zp = range_to_qparams(xr.min(), xr.max(), "MINMAX_ASYM", 8)
        qp = numerics.QuantParams(scale, zp, -128, 127)
        errors[rot is not None] = float((numerics.fake_quantize(xr, qp) @ wr.t() - ref).pow(2).mean())
    assert errors[True] < errors[False] / 3


@pytest.fixture(scope="module")
def rotated_bundle(tiny_models, tmp_path_factory):
    import mcq

    model = tiny_models("llama-tiny")
    cfg = dataclasses.replace(mcq.preset("W8A8KV8"), act_rotation=True)
    q = mcq.quantize(model, cfg, progress=False)
    path = tmp_path_factory.mktemp("rotation") / "llama-rotated.mcq"
    q.save(path)
    return model, q, path


def test_rotated_bundle_stores_one_pair_of_factors_per_width(rotated_bundle):
    _, q, _ = rotated_bundle
    nodes = q.sections["qformat"]["nodes"]
    down = nodes["model.layers.0.mlp.down_proj/linear0"]["inputs"]["x"]
    qproj = nodes["model.layers.1.self_attn.q_proj/linear0"]["inputs"]["x"]
    assert down["granularity"] == "rotated_tensor" and qproj["granularity"] == "rotated_tensor"
    assert down["rotation"] == ["rotation.128.a", "rotation.128.b"]
    assert qproj["rotation"] == ["rotation.64.a", "rotation.64.b"]
    assert sorted(k for k in q.tensors if k.startswith("rotation.")) == \
        ["rotation.128.a", "rotation.128.b", "rotation.64.a", "rotation.64.b"]


def test_token_table_tied_to_a_rotated_lm_head_is_stored_once_and_rotated_back(tiny_models):
    import mcq
    from runtime.lower import quant_params

    model = tiny_models("gpt2-tiny")  # tied token table and lm_head
    q = mcq.quantize(model, dataclasses.replace(mcq.preset("W8A8KV8"), act_rotation=True), progress=False)
    nodes = q.sections["qformat"]["nodes"]
    emb_key, emb = next((k, e) for k, e in nodes.items() if e["kind"] == "embedding"
                        and e["weight"].get("shared_with"))
    lm = emb["weight"]["shared_with"]
    assert nodes[lm]["inputs"]["x"]["granularity"] == "rotated_tensor" and "smooth" not in emb["weight"]
    assert f"{emb_key}/weight" not in q.tensors  # no table of its own
    graph = q.sections["graph/prefill"]["nodes"]
    lookup = next(i for i, n in enumerate(graph) if n.get("qkey") == emb_key)
    assert graph[lookup + 1]["op"] == "aten.matmul.default" and graph[lookup]["name"].endswith("_rotated")
    # looked-up rows: the lm_head's rotated, smoothed int8 rows, rotated back and unsmoothed
    rows = numerics.dequantize(q.tensors[f"{lm}/weight"], quant_params(emb["weight"], q.tensors.__getitem__)) \
        @ q.tensors[f"{emb_key}/unrotate"]
    table = model.get_input_embeddings().weight.detach()
    err = (rows - table).abs().amax(dim=1) / table.abs().amax(dim=1)
    assert float(err.max()) < 0.05
    ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
    got = q.model(4).prefill(ids)[0]
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_rotated_bundle_runs_bit_identical_at_qlevels_3_and_4_and_near_qlevel_2(rotated_bundle, hf_reference):
    import runtime

    model, _, path = rotated_bundle
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    runs = {}
    for level in (2, 3, 4):
        m = runtime.load(path, level, engine="reference")
        logits, cache = m.prefill(ids, mask)
        step, _ = m.decode(logits[:, -1].argmax(-1), cache)
        runs[level] = (logits, step)
    assert torch.equal(runs[3][0], runs[4][0]) and torch.equal(runs[3][1], runs[4][1])
    assert (runs[2][0] - runs[3][0]).abs().max() < 1e-3
    eager = hf_reference(model, ids, mask)
    diff = (runs[4][0] - eager)[mask.bool()].abs().max()
    assert 0 < diff < 0.05


def test_rotation_lowers_the_logit_error_of_a_tiny_model(rotated_bundle, quantized, hf_reference):
    import runtime

    model, _, path = rotated_bundle
    _, _, plain = quantized("llama-tiny", "W8A8KV8")
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids)
    eager = hf_reference(model, ids, mask)
    err = {p: float((runtime.load(p, 4, engine="reference").prefill(ids, mask)[0] - eager).pow(2).mean()) for p in (plain, path)}
    assert err[path] < err[plain] / 1.5


DOWN = "model.layers.0.mlp.down_proj/linear0"


def _with_x_spec(q, key: str, **changes) -> dict:
    """The bundle's sections with quant point `key`'s x input spec changed."""
    nodes = dict(q.sections["qformat"]["nodes"])
    entry = nodes[key]
    nodes[key] = {**entry, "inputs": {**entry["inputs"], "x": {**entry["inputs"]["x"], **changes}}}
    return {**q.sections, "qformat": {**q.sections["qformat"], "nodes": nodes}}


def test_rotated_spec_outside_a_linear_input_is_rejected(rotated_bundle):
    from runtime.lower import LoweringError
    from runtime.model import from_sections

    _, q, _ = rotated_bundle
    kv_key = next(k for k, e in q.sections["qformat"]["nodes"].items() if e["kind"] == "kv_cache")
    rotation = q.sections["qformat"]["nodes"][DOWN]["inputs"]["x"]["rotation"]
    sections = _with_x_spec(q, kv_key, granularity="rotated_tensor", rotation=rotation)
    with pytest.raises(LoweringError, match="linear inputs only"):
        from_sections(sections, q.tensors.__getitem__, 4)


def test_rotation_factors_that_do_not_cover_the_input_are_rejected(rotated_bundle):
    from runtime.lower import LoweringError
    from runtime.model import from_sections

    _, q, _ = rotated_bundle
    sections = _with_x_spec(q, DOWN, rotation=["rotation.64.a", "rotation.64.b"])
    with pytest.raises(LoweringError, match="do not cover"):
        from_sections(sections, q.tensors.__getitem__, 4)


def test_rotation_naming_a_missing_tensor_fails_validation(rotated_bundle, tmp_path):
    import mcq_format
    from mcq.bundle import to_numpy

    _, q, _ = rotated_bundle
    sections = _with_x_spec(q, DOWN, rotation=["rotation.128.a", "nope"])
    with pytest.raises(mcq_format.TensorReferenceError, match="nope"):
        mcq_format.write(tmp_path / "bad.mcq", {k: to_numpy(v) for k, v in q.tensors.items()}, sections)


def test_act_rotation_with_searched_smoothing_is_a_config_error():
    import mcq

    with pytest.raises(mcq.ConfigError, match="act_rotation"):
        mcq.QuantConfig(smoothquant=True, smoothquant_alpha="auto", act_rotation=True)
