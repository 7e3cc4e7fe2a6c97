from __future__ import annotations

import pytest

from mcq.config import ConfigError, QuantConfig, preset


def test_defaults_are_the_reference_recipe():
    c = preset("W8A8KV8")
    assert (c.weight_dtype, c.weight_granularity, c.weight_calib_method) == ("int8", "channel", "AMAX_SYM")
    assert (c.act_dtype, c.act_calib_method, c.kv_dtype) == ("int8", "MINMAX_ASYM", "int8")
    assert c.smoothquant and c.smoothquant_alpha == 0.75 and c.act_outlier_threshold == 32.0
    assert c.gptq  # GPTQ rounding of the smoothed int8 weights


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'wieght_dtype'"):
        QuantConfig.from_dict({"wieght_dtype": "int8"})


@pytest.mark.parametrize("key,value,allowed", [
    ("act_calib_method", "MINMAX", "MINMAX_ASYM"),
    ("weight_dtype", "int7", "int8"),
    ("kv_dtype", "fp4", "int8"),
    ("qlevel", 5, "4"),
    ("weight_granularity", "row", "channel"),
    ("act_range_search", "OUTPUT_MSE", "output_mse"),
    ("act_range_search", True, "output_mse"),
])
def test_invalid_value_names_key_and_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as e:
        QuantConfig.from_dict({key: value})
    assert key in str(e.value) and allowed in str(e.value)


def test_bad_types():
    with pytest.raises(ConfigError, match="disable_inout"):
        QuantConfig(disable_inout="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="percentile"):
        QuantConfig(percentile=120)
    with pytest.raises(ConfigError, match="weight_nbits"):
        QuantConfig(weight_nbits=4)  # int8 weights have 8 bits


def test_yaml_with_preset_and_override(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text("preset: W8A16\ndisable_inout: true\n")
    c = QuantConfig.from_yaml(p)
    assert c.act_dtype == "float32" and c.disable_inout and c.weight_dtype == "int8"


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        QuantConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="cannot read"):
        QuantConfig.from_yaml(tmp_path / "missing.yaml")
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        QuantConfig.from_yaml(p)


def test_config_is_frozen():
    c = QuantConfig()
    with pytest.raises(Exception):
        c.act_dtype = "float32"  # type: ignore[misc]


def test_overrides_from_yaml_apply_per_node(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text(
        "preset: W8A8KV8\n"
        "overrides:\n"
        "  - {match: 'lm_head/*', weight_dtype: float32, act_dtype: float32}\n"
        "  - {match: '*.mlp.*', kind: linear, act_dtype: float32}\n"
    )
    c = QuantConfig.from_yaml(p)
    assert c.for_node("lm_head/linear0", "linear").weight_dtype == "float32"
    assert c.for_node("model.layers.3.mlp.down_proj/linear0", "linear").act_dtype == "float32"
    assert c.for_node("model.layers.3.self_attn.q_proj/linear0", "linear").act_dtype == "int8"
    assert c.to_dict()["overrides"][-1] == {"match": "*.mlp.*", "kind": "linear", "act_dtype": "float32"}
    # the preset's own overrides come first: the file's win where both match
    assert c.overrides[: len(preset("W8A8KV8").overrides)] == preset("W8A8KV8").overrides


@pytest.mark.parametrize("overrides,needle", [
    ("[{weight_dtype: float32}]", "string 'match' glob"),
    ("[{match: 'x', qlevel: 3}]", "cannot be overridden per node"),
    ("[{match: 'x', act_dtype: int3}]", "act_dtype"),
    ("[{match: 'x', kind: conv}]", "kind"),
    ("[{match: 'x', act_range_search: mse}]", "act_range_search: 'mse' is not one of None, output_mse"),
    ("{match: 'x'}", "expected a list"),
])
def test_bad_overrides_are_named(tmp_path, overrides, needle):
    p = tmp_path / "q.yaml"
    p.write_text(f"overrides: {overrides}\n")
    with pytest.raises(ConfigError, match="overrides") as e:
        QuantConfig.from_yaml(p)
    assert needle in str(e.value)


def test_overrides_shape_the_qformat(tiny_models):
    from mcq.capture import capture_causal_lm
    from mcq.plan import plan_qformat

    graph = capture_causal_lm(tiny_models("llama-tiny")).graphs["prefill"]
    cfg = QuantConfig.from_dict({"overrides": [
        {"match": "lm_head/*", "weight_dtype": "float32", "act_dtype": "float32"},
        {"match": "*.mlp.down_proj/*", "act_dtype": "float32"},
        {"match": "model.layers.1.*", "kind": "kv_cache", "kv_dtype": "float32"},
    ]})
    nodes = plan_qformat(graph, cfg)["nodes"]
    assert "lm_head/linear0" not in nodes
    assert nodes["model.layers.0.mlp.down_proj/linear0"]["inputs"] == {}
    assert nodes["model.layers.0.mlp.down_proj/linear0"]["weight"]["dtype"] == "int8"
    assert "model.layers.1.self_attn/k_cache" not in nodes
    assert "model.layers.1.self_attn/bmm0" not in nodes  # its K operand is no longer quantized
    assert "model.layers.0.self_attn/bmm0" in nodes


def test_nbits_follow_the_dtype_unless_set():
    assert QuantConfig(weight_dtype="int4").weight_bits == 4
    assert QuantConfig(weight_dtype="int4", weight_nbits=4).weight_bits == 4
    with pytest.raises(ConfigError, match="weight_nbits: 8 does not match int4"):
        QuantConfig(weight_dtype="int4", weight_nbits=8)
    with pytest.raises(ConfigError, match="act_nbits"):
        QuantConfig(act_dtype="bfloat16", act_nbits=8)


def test_group_size_and_gptq_are_checked():
    with pytest.raises(ConfigError, match="weight_group_size: 7"):
        QuantConfig(weight_granularity="group", weight_group_size=7)
    with pytest.raises(ConfigError, match="gptq: 'yes' is not a boolean"):
        QuantConfig(gptq="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gptq_damp"):
        QuantConfig(gptq_damp=0)
    with pytest.raises(ConfigError, match="gptq_sequential: 2 is not a boolean"):
        QuantConfig(gptq_sequential=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gptq_fit_damp: 0 is not a number"):
        QuantConfig(gptq_fit_damp=0)


def test_format_presets():
    w4 = preset("W4A16")
    assert (w4.weight_dtype, w4.weight_granularity, w4.weight_group_size, w4.gptq) == ("int4", "group", 128, True)
    assert (w4.act_dtype, w4.kv_dtype) == ("float32", "float32")
    # sequential GPTQ with the dampening chosen on SmolLM2 (CHANGELOG.md, measurement history)
    assert (w4.gptq_sequential, w4.gptq_damp, w4.gptq_fit_damp) == (True, 0.3, 0.5)
    assert not preset("W8A8KV8").gptq_sequential  # measured no better there (CHANGELOG.md, session 5)
    f8 = preset("W8fA8f")
    assert (f8.weight_dtype, f8.act_dtype, f8.kv_dtype) == ("fp8_e4m3fn",) * 3
    assert preset("W16A16").act_dtype == "bfloat16"


def test_smoothquant_alpha_can_be_set_per_node(tiny_models):
    import dataclasses

    import torch

    import mcq
    from mcq import channels, pipeline
    from mcq.config import Override
    from mcq.plan import plan_qformat

    captured = mcq.capture_model(tiny_models("llama-tiny"))
    cfg = dataclasses.replace(preset("W8A8KV8"), overrides=(
        Override("*.mlp.down_proj/*", "linear", (("smoothquant_alpha", 0.9),)),))
    plan = plan_qformat(captured.graphs["prefill"], cfg)
    calibration = pipeline.NodePass(captured, cfg, plan, captured.tensors.__getitem__, None, None)
    calibration.run(pipeline.calibration_batches(captured, plan, mcq.random_samples(512, 2), 2), False)
    down = "model.layers.0.mlp.down_proj/linear0"
    assert calibration.alphas[down] == 0.9
    assert calibration.alphas["model.layers.0.mlp.gate_proj/linear0"] == 0.75
    assert len(calibration.alphas) == len(channels.groups(captured.graphs["prefill"], plan))
    weight = lambda k: captured.tensors[calibration.weight_of[k]]  # noqa: E731
    for alpha, same in ((0.9, True), (0.75, False)):  # the smoothing is the one alpha 0.9 gives
        smooth = channels.group_plan([down], plan, calibration.observers, weight, alpha, cfg.act_outlier_threshold).smooth
        assert torch.equal(calibration.chan[down].smooth, smooth) == same


def test_w4a16m_keeps_the_sensitive_projections_int8():
    import mcq

    cfg = mcq.preset("W4A16M")
    dtype = lambda k: cfg.for_node(k, "linear").weight_dtype  # noqa: E731
    assert dtype("model.layers.3.mlp.down_proj/linear0") == "int8"
    assert dtype("model.layers.13.mlp.down_proj/linear0") == "int4"
    assert dtype("model.layers.13.self_attn.v_proj/linear0") == dtype("model.layers.0.self_attn.k_proj/linear0") == "int8"
    assert dtype("model.layers.13.self_attn.q_proj/linear0") == dtype("model.layers.2.mlp.up_proj/linear0") == "int4"
    assert dtype("lm_head/linear0") == "int8" and cfg.for_node("lm_head/linear0", "linear").weight_granularity == "channel"


def test_act_range_search_is_off_by_default_and_can_be_set_per_node(tmp_path):
    assert QuantConfig().act_range_search is None
    assert all(preset(name).act_range_search is None for name in ("W8A8", "W8A16", "W4A16"))
    p = tmp_path / "q.yaml"
    p.write_text("preset: W8A8KV8\noverrides: [{match: '*.mlp.down_proj/*', kind: linear, "
                 "act_range_search: output_mse}]\n")
    cfg = QuantConfig.from_yaml(p)
    assert cfg.for_node("model.layers.2.mlp.down_proj/linear0", "linear").act_range_search == "output_mse"
    assert cfg.for_node("model.layers.2.mlp.up_proj/linear0", "linear").act_range_search is None
    assert cfg.for_node("model.layers.2.mlp.down_proj/linear0", "linear").act_rotation  # the preset's stays
