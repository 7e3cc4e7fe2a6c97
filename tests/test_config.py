from __future__ import annotations

import pytest

from mcq.config import ConfigError, QuantConfig, preset


def test_defaults_are_the_reference_recipe():
    c = preset("W8A8KV8")
    assert (c.weight_dtype, c.weight_granularity, c.weight_calib_method) == ("int8", "channel", "AMAX_SYM")
    assert (c.act_dtype, c.act_calib_method, c.kv_dtype) == ("int8", "MINMAX_ASYM", "int8")
    assert c.smoothquant and c.smoothquant_alpha == 0.75 and c.act_outlier_threshold == 32.0


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'wieght_dtype'"):
        QuantConfig.from_dict({"wieght_dtype": "int8"})


@pytest.mark.parametrize("key,value,allowed", [
    ("act_calib_method", "MINMAX", "MINMAX_ASYM"),
    ("weight_dtype", "int7", "int8"),
    ("kv_dtype", "fp4", "int8"),
    ("qlevel", 5, "4"),
    ("weight_granularity", "row", "channel"),
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
        QuantConfig(weight_nbits=4)


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
