"""The quantization config: one object, set once, validated on construction.

Keys follow the reference flow's YAML (weight_calib_method, act_dtype, kv_dtype, ...). Unknown
keys and invalid values raise ConfigError naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A config key or value is not accepted; the message names it and the allowed values."""


# *_ASYM weights carry zero points: weight-only linears (an int8 activation has no kernel with them)
WEIGHT_METHODS = ("AMAX_SYM", "PERCENTILE_SYM", "MSE_SYM", "MINMAX_ASYM", "MSE_ASYM")
ACT_METHODS = ("MINMAX_ASYM", "AMAX_SYM", "PERCENTILE_SYM", "PERCENTILE_ASYM", "ENTROPY_SYM", "ENTROPY_ASYM",
               "MSE_SYM")
# quant format ids (spec Q.2a); float32 leaves a tensor unquantized
WEIGHT_DTYPES = ("int8", "int4", "fp8_e4m3fn", "bfloat16", "float32")
ACT_DTYPES = ("int8", "fp8_e4m3fn", "bfloat16", "float32")
DTYPE_BITS = {"int8": 8, "int4": 4, "fp8_e4m3fn": 8, "bfloat16": 16, "float32": 32}
WEIGHT_GRANULARITIES = ("channel", "tensor", "group")
ACT_GRANULARITIES = ("tensor",)
QLEVELS = (2, 3, 4)

_ALLOWED: dict[str, tuple[Any, ...]] = {
    "weight_calib_method": WEIGHT_METHODS,
    "weight_dtype": WEIGHT_DTYPES,
    "weight_granularity": WEIGHT_GRANULARITIES,
    "act_calib_method": ACT_METHODS,
    "act_dtype": ACT_DTYPES,
    "act_granularity": ACT_GRANULARITIES,
    "kv_dtype": ACT_DTYPES,
    "attn_granularity": ("tensor", "head"),
    "act_range_search": (None, "output_mse"),
    "embedding_dtype": (None, "int8", "float32"),
    "qlevel": QLEVELS,
}


NODE_KINDS = ("linear", "bmm", "kv_cache", "embedding")
# keys an override may set for the quant points it matches
NODE_KEYS = ("weight_calib_method", "weight_dtype", "weight_granularity", "weight_group_size", "weight_nbits",
             "act_calib_method", "act_dtype", "act_granularity", "act_nbits", "percentile", "kv_dtype",
             "smoothquant", "smoothquant_alpha", "act_outlier_threshold", "act_rotation", "gptq", "attn_granularity",
             "embedding_dtype", "act_range_search")


@dataclass(frozen=True)
class Override:
    """Per-node settings for the quant points whose qkey matches `match` (a glob, e.g.
    "lm_head/*" or "*.mlp.down_proj/*"), optionally only those of one `kind`."""

    match: str
    kind: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()

    def applies(self, qkey: str, kind: str) -> bool:
        return fnmatch.fnmatchcase(qkey, self.match) and self.kind in (None, kind)

    def to_dict(self) -> dict[str, Any]:
        return {"match": self.match, **({"kind": self.kind} if self.kind else {}), **dict(self.settings)}


def _override(data: Any, where: str) -> Override:
    if not isinstance(data, Mapping) or not isinstance(data.get("match"), str):
        raise ConfigError(f"{where}: an override is a mapping with a string 'match' glob, e.g. "
                          "{match: 'lm_head/*', weight_dtype: float32}")
    kind = data.get("kind")
    if kind is not None and kind not in NODE_KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(NODE_KINDS)}")
    settings = []
    for key, value in data.items():
        if key in ("match", "kind"):
            continue
        if key not in NODE_KEYS:
            raise ConfigError(f"{where}: key {key!r} cannot be overridden per node "
                              f"(allowed: {', '.join(NODE_KEYS)})")
        settings.append((key, value))
    try:
        QuantConfig(**dict(settings))  # every value checked now, not when a node matches
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return Override(data["match"], kind, tuple(settings))


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model. Build with keywords, `from_yaml` or `preset`."""

    weight_calib_method: str = "AMAX_SYM"
    weight_dtype: str = "int8"
    weight_granularity: str = "channel"
    weight_nbits: int | None = None  # None: the dtype's bits (a set value must agree with it)
    weight_group_size: int = 128  # granularity "group": input channels per weight scale
    act_calib_method: str = "MINMAX_ASYM"
    act_dtype: str = "int8"
    act_granularity: str = "tensor"
    act_nbits: int | None = None
    percentile: float = 99.99
    # static per-tensor linear inputs: None keeps the calibrated range (act_calib_method);
    # "output_mse" shrinks it by the factor in ACT_CLIP_GRID (1.0 .. 0.5) whose quantized input
    # gives the least squared error of the linear's output, ||(Q(x) - x) W^T||^2 summed over the
    # calibration tokens and over the linears reading that input (mcq.channels.search_clip)
    act_range_search: str | None = None
    kv_dtype: str = "int8"
    # the query operand of Q.K^T: one scale per tensor, or per attention head (as the keys have)
    attn_granularity: str = "tensor"
    # token embedding tables: int8 rows (one scale per token), or float32; None follows the
    # weights (int8 when they are int8 / int4). A table tied to an int8 lm_head is stored once.
    embedding_dtype: str | None = None
    disable_inout: bool = False
    smoothquant: bool = False
    smoothquant_alpha: float | str = 0.5  # or "auto": per-group search on the calibration data
    # input channels whose calibrated abs-max exceeds this x the median channel's leave the integer
    # GEMM for a float side product (at most 1 % of channels); 0 turns it off
    act_outlier_threshold: float = 0.0
    # rotate each quantized linear input (after the outlier channels and smoothing) by a fixed
    # orthogonal matrix before its per-tensor quantizer; the stored weight is rotated alike (mcq.rotation)
    act_rotation: bool = False
    # GPTQ rounding of int8 / int4 / fp8 weights (Hessians from the same calibration data); off or
    # for float32 / bfloat16 weights: nearest
    gptq: bool = False
    gptq_damp: float = 0.01
    # GPTQ's column order: by input energy (true) or as stored (false); None: by energy for group
    # scales only. W8A16 takes true (salient input channels' errors absorbed by the others)
    gptq_act_order: bool | None = None
    # GPTQ once more, layer by layer, on the inputs the quantized model gives each linear, fitted to
    # the float model's outputs (mcq.sequential); false: on the float model's inputs only
    gptq_sequential: bool = False
    gptq_fit_damp: float = 1.0  # dampening of that fit, x the mean diagonal of the Hessian
    # mixed precision: later overrides win; see `Override`
    overrides: tuple[Override, ...] = ()
    # automatic mixed precision (mcq.search): raise the most sensitive quant points until the
    # held-out perplexity is within auto_max_increase % of float, or raise auto_max_fraction of them
    auto_max_increase: float | None = None
    auto_max_fraction: float | None = None
    auto_samples: int = 8  # calibration samples held out to measure sensitivity and perplexity
    qlevel: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = _ALLOWED.get(f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(map(str, allowed))}")
        for key, dtype in (("weight_nbits", self.weight_dtype), ("act_nbits", self.act_dtype)):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or value != DTYPE_BITS[dtype]):
                raise ConfigError(f"{key}: {value!r} does not match {dtype} ({DTYPE_BITS[dtype]} bits); "
                                  "leave it out to take the dtype's bits")
        g = self.weight_group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 2 or g % 2:
            raise ConfigError(f"weight_group_size: {g!r} is not an even integer >= 2")
        d = self.gptq_damp
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < float(d) <= 1.0:
            raise ConfigError(f"gptq_damp: {d!r} is not a number in (0, 1]")
        d = self.gptq_fit_damp
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < float(d) <= 1000.0:
            raise ConfigError(f"gptq_fit_damp: {d!r} is not a number in (0, 1000]")
        if self.auto_max_increase is not None and self.auto_max_fraction is not None:
            raise ConfigError("auto_max_increase and auto_max_fraction: give one budget, not both")
        for key, top in (("auto_max_increase", 1000.0), ("auto_max_fraction", 1.0)):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= top):
                raise ConfigError(f"{key}: {v!r} is not a number in [0, {top:g}]")
        n = self.auto_samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"auto_samples: {n!r} is not an integer >= 1")
        for key in ("disable_inout", "smoothquant", "gptq", "gptq_sequential", "act_rotation"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not a boolean (true or false)")
        if self.gptq_act_order is not None and not isinstance(self.gptq_act_order, bool):
            raise ConfigError(f"gptq_act_order: {self.gptq_act_order!r} is not a boolean (true or false) or null "
                              "(by input energy for group scales only)")
        t = self.act_outlier_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ConfigError(f"act_outlier_threshold: {t!r} is not a number >= 0 (0 turns it off)")
        a = self.smoothquant_alpha
        if a != "auto" and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= float(a) <= 1.0):
            raise ConfigError(f"smoothquant_alpha: {a!r} is not a number in [0, 1] or 'auto'")
        if self.act_rotation and a == "auto":
            raise ConfigError("smoothquant_alpha: 'auto' searches on unrotated inputs; with act_rotation "
                              "give a number")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50.0 < float(p) <= 100.0:
            raise ConfigError(f"percentile: {p!r} is not a number in (50, 100]")

    def for_node(self, qkey: str, kind: str) -> "QuantConfig":
        """The settings that apply to one quant point after the overrides matching it."""
        merged: dict[str, Any] = {}
        for o in self.overrides:
            if o.applies(qkey, kind):
                merged.update(o.settings)
        return dataclasses.replace(self, **merged) if merged else self

    @property
    def weight_bits(self) -> int:
        return DTYPE_BITS[self.weight_dtype]

    @property
    def act_bits(self) -> int:
        return DTYPE_BITS[self.act_dtype]

    @property
    def searches(self) -> bool:
        return self.auto_max_increase is not None or self.auto_max_fraction is not None

    @property
    def quantizes_weights(self) -> bool:
        return self.weight_dtype != "float32"

    @property
    def quantizes_embedding(self) -> bool:
        if self.embedding_dtype is None:
            return self.weight_dtype in ("int8", "int4")
        return self.embedding_dtype == "int8"

    @property
    def quantizes_acts(self) -> bool:
        return self.act_dtype != "float32"

    @property
    def quantizes_kv(self) -> bool:
        return self.kv_dtype != "float32"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "QuantConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        base: dict[str, Any] = {}
        if "preset" in data:
            base = {f.name: getattr(preset(str(data["preset"])), f.name) for f in fields(cls)}
        for key, value in data.items():
            if key == "preset":
                continue
            if key == "overrides":
                if not isinstance(value, list):
                    raise ConfigError(f"{source}: overrides: expected a list of {{match: GLOB, KEY: VALUE}}")
                # after the preset's own (W4A16's int8 lm_head, W8A8KV8's rotated inputs): later wins
                base[key] = tuple(base.get(key, ())) + \
                    tuple(_override(o, f"{source}: overrides[{i}]") for i, o in enumerate(value))
                continue
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r} (known keys: {', '.join(sorted(known | {'preset'}))})")
            base[key] = value
        return cls(**base)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QuantConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(data or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["overrides"] = [o.to_dict() for o in self.overrides]
        return d


# linear inputs the W8A8 presets rotate (act_rotation): the MLP output projections (Llama / GPT-J /
# GPT-2 names), whose post-activation inputs per-tensor int8 fits worst, and the vocabulary
# projection. On SmolLM2 W8A8KV8 this took most of the loss left after smoothing, and rotating every
# linear input too gained nothing for four times the rotations per decode step (CHANGELOG, session 8)
ROTATED_INPUTS = ("*.mlp.down_proj/*", "*.mlp.fc_out/*", "*.mlp.c_proj/*", "lm_head/*")
_ROTATED = tuple(Override(m, "linear", (("act_rotation", True),)) for m in ROTATED_INPUTS)

PRESETS: dict[str, dict[str, Any]] = {
    # The reference recipe: int8 per-channel weights after SmoothQuant, int8 per-tensor activations
    # at linear and Q.K^T inputs, int8 KV cache; norms, softmax, P.V and residual adds stay float.
    # Alpha 0.75, the outlier-channel split, GPTQ rounding of the smoothed int8 weights and the
    # rotated MLP-output and lm_head inputs (ROTATED_INPUTS) each lowered SmolLM2's perplexity
    # (how each was chosen: CHANGELOG; the preset's current figure: docs/benchmarks.md).
    "W8A8KV8": {"smoothquant": True, "smoothquant_alpha": 0.75, "act_outlier_threshold": 32.0, "gptq": True,
                "overrides": _ROTATED},
    "W8A8": {"smoothquant": True, "smoothquant_alpha": 0.75, "act_outlier_threshold": 32.0, "gptq": True,
             "kv_dtype": "float32", "overrides": _ROTATED},
    # int8 per-channel weights, GPTQ-rounded with columns in order of input energy: on SmolLM2 less
    # than half the loss of nearest rounding or GPTQ in stored order, where finer group scales
    # barely helped at 1.3x the size (docs/benchmarks.md)
    "W8A16": {"act_dtype": "float32", "kv_dtype": "float32", "gptq": True, "gptq_act_order": True},
    # int4 weights in groups of 128 input channels with zero points (MSE-clipped), GPTQ-rounded,
    # then sequential GPTQ (dampening 0.3, fit 0.5: on SmolLM2 about 40 % less loss than plain GPTQ);
    # lm_head keeps int8 per-channel weights, as llama.cpp's 4-bit types keep the output layer wider
    "W4A16": {"weight_dtype": "int4", "weight_granularity": "group", "weight_group_size": 128,
              "weight_calib_method": "MSE_ASYM", "gptq": True, "gptq_sequential": True, "gptq_damp": 0.3,
              "gptq_fit_damp": 0.5, "act_dtype": "float32", "kv_dtype": "float32",
              "overrides": (Override("lm_head/*", "linear", (("weight_dtype", "int8"), ("weight_granularity", "channel"),
                                                            ("weight_calib_method", "AMAX_SYM"))),)},
    # W4A16 plus int8 per-channel k_proj / v_proj and the first ten layers' down_proj (about 15 % of
    # the linear weights): the layers int4 hurts most, kept wider as llama.cpp's Q4_K_M does.
    # less loss than W4A16 for a file about 0.17x fp32 instead of 0.16x (docs/benchmarks.md)
    "W4A16M": {"weight_dtype": "int4", "weight_granularity": "group", "weight_group_size": 128,
               "weight_calib_method": "MSE_ASYM", "gptq": True, "gptq_sequential": True, "gptq_damp": 0.3,
               "gptq_fit_damp": 0.5, "act_dtype": "float32", "kv_dtype": "float32",
               "overrides": tuple(Override(m, "linear", (("weight_dtype", "int8"), ("weight_granularity", "channel"),
                                                         ("weight_calib_method", "AMAX_SYM"))) for m in
                                  ("lm_head/*", "*.k_proj/*", "*.v_proj/*", "model.layers.[0-9].mlp.down_proj/*"))},
    # fp8 e4m3: per-channel weight scales, per-tensor activation scales, fp8 KV cache per head
    "W8fA8f": {"weight_dtype": "fp8_e4m3fn", "act_dtype": "fp8_e4m3fn", "act_calib_method": "AMAX_SYM",
               "kv_dtype": "fp8_e4m3fn"},
    # bfloat16 weights, activations and KV cache: a cast, no calibration
    "W16A16": {"weight_dtype": "bfloat16", "act_dtype": "bfloat16", "kv_dtype": "bfloat16"},
    "FLOAT": {"weight_dtype": "float32", "act_dtype": "float32", "kv_dtype": "float32"},
}


# the recipe `mcq.quantize(model)`, `quantize_streaming` and `mcq quantize` use without a config
DEFAULT_PRESET = "W8A8KV8"


def default_config() -> QuantConfig:
    return preset(DEFAULT_PRESET)


def preset(name: str) -> QuantConfig:
    try:
        return QuantConfig(**PRESETS[name])
    except KeyError:
        raise ConfigError(f"preset: {name!r} is not one of {', '.join(PRESETS)}") from None
