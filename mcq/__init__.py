"""mcq: quantize a PyTorch model into one self-contained `.mcq` file.

    import mcq
    q = mcq.quantize(model, mcq.QuantConfig(), tokenizer=tok)   # capture + calibrate
    q.save("model.mcq")                                         # one file, no pickles
    runtime.load("model.mcq").generate("The capital of France is")

Hugging Face causal LMs get prefill/decode entry points, Hugging Face encoders (BERT style) a
`forward` entry point with sentence embeddings (`runtime.load(...).embed(texts)`), and any other
nn.Module that torch.export can capture a `forward` entry point over its own inputs:

    q = mcq.quantize(module, cfg, example_inputs=(x,), samples=[(x1,), (x2,)])
    runtime.load("module.mcq")(x)

A causal LM larger than memory streams from its safetensors checkpoint, one weight at a time,
straight into the file (optionally one shard of the calibration data per torch.distributed rank):

    mcq.quantize_streaming("gpt-j-6b/", "gptj.mcq", mcq.preset("W8A8KV8"))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from mcq.config import ConfigError, QuantConfig, default_config, preset

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"
__all__ = ["ConfigError", "QuantConfig", "Quantized", "capture_model", "preset", "quantize", "quantize_streaming",
           "__version__"]


def __getattr__(name: str) -> Any:
    # mcq.quantize_streaming (mcq.stream) is imported on first use: `import mcq` stays light
    if name == "quantize_streaming":
        from mcq.stream import quantize_streaming

        return quantize_streaming
    raise AttributeError(f"module 'mcq' has no attribute {name!r}")


@dataclass
class Quantized:
    """The result of `quantize`: everything a bundle holds, still in memory."""

    sections: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    config: QuantConfig

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bundle atomically: the file appears whole or not at all."""
        import mcq_format

        from mcq.bundle import to_numpy

        mcq_format.write(path, {k: to_numpy(v) for k, v in self.tensors.items()}, self.sections)

    def model(self, qlevel: int | None = None):
        """A runtime model over the in-memory bundle (qlevel 2, 3 or 4), without writing a file."""
        from runtime.model import from_sections

        return from_sections(self.sections, self.tensors.__getitem__,
                             self.config.qlevel if qlevel is None else qlevel)


def random_samples(vocab: int, n: int = 8, seq_len: int = 32, seed: int = 0) -> list[list[int]]:
    """Seeded random token sequences, for models without a tokenizer (tests, tiny examples)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq_len), generator=gen).tolist()


def attention_heads(model_config: dict[str, Any]) -> int:
    """Attention heads of a captured HF model (per-head query scales; KV heads repeat over them)."""
    return int(model_config.get("num_attention_heads") or model_config.get("n_head") or 1)


def capture_model(model: torch.nn.Module, example_inputs: Any = None, dynamic_shapes: Any = None,
                  progress: bool = False):
    """Export `model` once; pass the result to `quantize` for each config.

    An HF causal LM gives prefill + decode graphs and an HF encoder (a model that cannot
    generate, e.g. BertModel) a `forward` graph, both without `example_inputs`. Any other module
    needs `example_inputs` (a tuple of positional arguments, or a dict of keyword arguments) and,
    for sizes that vary, torch.export's `dynamic_shapes`. `progress`: the export's steps on stderr."""
    from mcq.capture import CaptureError, capture_causal_lm, capture_encoder, capture_module, is_hf_encoder

    if example_inputs is not None:
        return capture_module(model, example_inputs, dynamic_shapes, progress)
    if is_hf_encoder(model):
        return capture_encoder(model, progress=progress)
    if not hasattr(model, "config"):
        raise CaptureError(f"{type(model).__name__} is not a Hugging Face model: pass example_inputs=(...) "
                           "(and dynamic_shapes) to capture it")
    return capture_causal_lm(model, progress=progress)


def token_samples(captured: Any, tokenizer: Any, data: str | os.PathLike[str] | None, seq_len: int,
                  max_samples: int | None, n_random: int = 8) -> list[list[int]]:
    """Calibration token ids: chunks of the token stream for a causal LM, one tokenized text
    (with its special tokens) per sample for an encoder, `n_random` seeded random sequences
    without a tokenizer."""
    from mcq.capture import ENCODER
    from mcq.data import load_samples, load_texts

    if tokenizer is None:
        return random_samples(int(captured.model_config["vocab_size"]), n_random)
    if captured.kind == ENCODER:
        # a copy: calibration must not change the tokenizer the bundle embeds (padding, truncation)
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        if backend.truncation is None or backend.truncation["max_length"] > seq_len:
            backend.enable_truncation(seq_len)
        return [backend.encode(t).ids for t in load_texts(data, max_samples)]
    encode = tokenizer.backend_tokenizer.encode
    return load_samples(lambda t: encode(t).ids, data, seq_len, max_samples)


def quantize(model: Any, config: QuantConfig | None = None, *, tokenizer: Any = None,
             data: str | os.PathLike[str] | None = None, samples: Sequence[Any] | None = None,
             example_inputs: Any = None, dynamic_shapes: Any = None,
             seq_len: int = 256, max_samples: int | None = 64, batch_size: int = 4,
             progress: bool = True, qparams: str | os.PathLike[str] | None = None,
             distributed: bool = False) -> Quantized:
    """Capture `model` (see `capture_model`), calibrate it and return the quantized bundle.
    Without `config`: the W8A8KV8 preset (`mcq.config.DEFAULT_PRESET`), as `mcq quantize`.

    HF models calibrate on token ids: `samples` (token-id lists) if given, else `data` (a .txt
    file or .json/.jsonl records {instruction, input, output}), else the built-in English text;
    models without a tokenizer calibrate on seeded random tokens. A generic module (given with
    `example_inputs`) calibrates on `samples`, each one call's inputs (a tuple of tensors or a
    dict of keyword arguments), else on `example_inputs` alone. `qparams`: an `.npz` of
    parameters calibrated elsewhere (reference schema, see `mcq export-reference`) that replace
    the calibrated ones. `distributed=True`: this process is one rank of an initialized
    torch.distributed group; each rank calibrates its shard of the batches and the statistics
    are all-reduced (`mcq.distributed`), so every rank returns the same bundle (save it on one).
    A model larger than memory: `quantize_streaming`.
    """
    from mcq import distributed as dist
    from mcq import pipeline
    from mcq.capture import CAUSAL_LM, MODULE, Captured

    cfg = config or default_config()  # the same recipe as `mcq quantize` without --preset
    rank, size = dist.world(distributed)
    pipeline.refuse_unsupported(cfg, size, streaming=False)
    # a Captured model (from `capture_model`) can be quantized with several configs without re-export
    captured = model if isinstance(model, Captured) else capture_model(model, example_inputs, dynamic_shapes,
                                                                       progress=progress)
    if cfg.searches and captured.kind != CAUSAL_LM:
        raise ConfigError("automatic mixed precision (auto_max_increase, auto_max_fraction) measures perplexity: "
                          "causal LMs only")
    if samples is None and captured.kind == MODULE:
        samples = [] if example_inputs is None else [example_inputs]
    elif samples is None:
        samples = token_samples(captured, tokenizer, data, seq_len, max_samples,
                                8 + (cfg.auto_samples if cfg.searches else 0))
    if cfg.searches:
        return _quantize_searched(captured, cfg, tokenizer, list(samples), batch_size, progress, qparams)
    tensors: dict[str, torch.Tensor] = {}  # the sink: every rank quantizes the whole bundle
    bundle_sections = pipeline.run(captured, cfg, samples, captured.tensors.__getitem__, tensors,
                                   tokenizer=tokenizer, batch_size=batch_size, progress=progress, qparams=qparams,
                                   rank=rank, size=size)
    return Quantized(bundle_sections, tensors, cfg)  # type: ignore[arg-type]


def _quantize_searched(captured: Any, cfg: QuantConfig, tokenizer: Any, samples: list[Any], batch_size: int,
                       progress: bool, qparams: Any) -> Quantized:
    """Automatic mixed precision (`mcq.search`): the last `cfg.auto_samples` samples are held out
    to measure per-node sensitivity and perplexity; the rest calibrate every trial."""
    import dataclasses

    from mcq import search
    from mcq.calibrate import batches_of
    from mcq.evaluate import perplexity
    from mcq.report import node_errors

    if len(samples) <= cfg.auto_samples:
        raise ConfigError(f"auto_samples: {cfg.auto_samples} held-out samples leave none of the {len(samples)} "
                          "calibration samples to calibrate on")
    calib, held = samples[: -cfg.auto_samples], samples[-cfg.auto_samples :]
    held_ids = [t for s in held for t in s]
    base = dataclasses.replace(cfg, auto_max_increase=None, auto_max_fraction=None)

    done: dict[QuantConfig, Quantized] = {}

    def run(c: QuantConfig) -> Quantized:
        if c not in done:  # the chosen trial is not quantized twice
            done[c] = quantize(captured, c, tokenizer=tokenizer, samples=calib, batch_size=batch_size,
                               progress=progress, qparams=qparams)
        return done[c]

    uniform = run(base)
    errors = node_errors(captured.graphs["prefill"], captured.tensors.__getitem__, uniform, batches_of(held, 1))
    measure = lambda q: perplexity(q.model(2), held_ids, window=len(held[0]))  # noqa: E731
    float_ppl = None
    if cfg.auto_max_increase is not None:
        float_ppl = measure(quantize(captured, preset("FLOAT"), tokenizer=tokenizer, samples=calib[:1],
                                     progress=False))
    result = search.search(run, base, errors, uniform.sections["qformat"], max_fraction=cfg.auto_max_fraction,
                           max_increase=cfg.auto_max_increase, perplexity=measure, float_perplexity=float_ppl)
    chosen = run(result.config)
    budget = {k: v for k, v in (("max_increase", cfg.auto_max_increase), ("max_fraction", cfg.auto_max_fraction))
              if v is not None}
    chosen.sections["manifest"]["quant"]["search"] = result.record(budget)
    return chosen
