"""Streaming quantization: a causal LM larger than memory, read from its safetensors checkpoint.

The model is built and captured on the meta device: no weight is materialized. `mcq.pipeline`
then runs the steps of `mcq.quantize` with the checkpoint as the tensor source (each weight read
when a node first needs it, dropped after its last use) and a `mcq_format.StreamWriter` as the
sink (every finished tensor goes straight to the file): the bundle is byte-identical to the one
`mcq.quantize(...).save(...)` writes for the same model, samples and config.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from mcq import distributed as dist
from mcq import pipeline
from mcq.bundle import to_numpy
from mcq.config import QuantConfig, default_config

CHECKPOINT_INDEX = "model.safetensors.index.json"


class Checkpoint:
    """The tensors of a Hugging Face safetensors checkpoint (one file, or shards with an index).

    Each read opens its shard, copies the tensor out and closes the shard: no memory map
    outlives a read (mapped pages would count in the process's resident memory)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / CHECKPOINT_INDEX
        self.files: dict[str, Path] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                self.files = {str(k): self.folder / str(v) for k, v in dict(weight_map).items()}
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        else:
            for shard in sorted(self.folder.glob("*.safetensors")):
                with safe_open(shard, framework="pt") as f:
                    for name in f.keys():
                        self.files.setdefault(name, shard)
        if not self.files:
            raise FileNotFoundError(f"{self.folder}: no safetensors checkpoint (*.safetensors, {CHECKPOINT_INDEX}); "
                                    "streaming reads the weights from safetensors files")
        missing = sorted({str(p) for p in self.files.values() if not p.is_file()})
        if missing:
            raise FileNotFoundError(f"{index}: names shard(s) that do not exist: {', '.join(missing[:3])}")

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name)


def meta_model(folder: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, torch.Tensor],
                                                        dict[str, list[str]], set[str]]:
    """The causal LM of a model folder with its parameters on the meta device.

    Returns (model, buffers computed at construction, e.g. rotary tables: name -> CPU tensor,
    tied-parameter aliases: name -> other names of the same parameter, names of GPT-2 Conv1D
    weights, which the capture turns into linears and so reads transposed)."""
    from mcq.extras import require

    init_empty_weights = require("accelerate", "streaming quantization (--stream)").init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = AutoConfig.from_pretrained(folder)
    try:
        # buffers stay real: they are small and computed, not stored in every checkpoint
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError as e:
        raise ValueError(f"{folder}: streaming quantizes causal LMs ({type(config).__name__}: {e})") from None
    model.tie_weights()  # as loading does (empty init skips it): tied names share one tensor
    model.eval()
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    aliases = {n: [m for m in names if m != n] for names in by_id.values() for n in names}
    conv1d = {f"{path}.weight" for path, m in model.named_modules() if isinstance(m, Conv1D)}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to("meta")
    return model, buffers, aliases, conv1d


class TensorSource:
    """The captured graph's float tensors by name, read on demand: from the checkpoint (through
    tied aliases; Conv1D weights transposed), else the buffers computed with the model; checked
    against the shape and converted to the dtype of the model's (meta) tensor."""

    def __init__(self, checkpoint: Checkpoint, like: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 aliases: dict[str, list[str]], transposed: set[str]) -> None:
        self.checkpoint, self.like, self.buffers = checkpoint, like, buffers
        self.aliases, self.transposed = aliases, transposed

    def __call__(self, name: str) -> torch.Tensor:
        like = self.like[name]
        found = next((c for c in (name, *self.aliases.get(name, ())) if c in self.checkpoint), None)
        if found is not None:
            t = self.checkpoint.read(found)
            if name in self.transposed:
                t = t.t()
        elif name in self.buffers:
            t = self.buffers[name]
        else:
            raise KeyError(f"{self.checkpoint.folder}: tensor {name!r} is not in the checkpoint")
        if tuple(t.shape) != tuple(like.shape):
            raise ValueError(f"{self.checkpoint.folder}: tensor {name!r} has shape {list(t.shape)} in the checkpoint, "
                             f"the model's config gives {list(like.shape)}")
        return t.to(like.dtype).contiguous()


class WriterSink:
    """The bundle's tensors as streaming produces them: spooled to the writer at once; small ones
    (parameters, smoothing vectors) also kept, for the steps that read them back (derived specs)."""

    KEEP_BYTES = 1 << 20

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.kept: dict[str, torch.Tensor] = {}

    def __setitem__(self, name: str, t: torch.Tensor) -> None:
        self.writer.add(name, to_numpy(t))
        if t.numel() * t.element_size() <= self.KEEP_BYTES:
            self.kept[name] = t

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.kept[name]

    def __contains__(self, name: object) -> bool:
        return name in self.writer


def quantize_streaming(model_dir: str | os.PathLike[str], output: str | os.PathLike[str],
                       config: QuantConfig | None = None, *, data: str | os.PathLike[str] | None = None,
                       samples: Sequence[Sequence[int]] | None = None, seq_len: int = 256,
                       max_samples: int | None = 64, batch_size: int = 4, progress: bool = True,
                       qparams: str | os.PathLike[str] | None = None, distributed: bool = False) -> Path | None:
    """Quantize the causal LM in `model_dir` (config.json + safetensors, sharded or not) into
    `output` without ever holding the model in memory; see the module docstring.

    Calibration data as in `mcq.quantize` (`samples`, else `data`, else the built-in text with the
    folder's tokenizer, else seeded random tokens). `distributed=True`: this process is one rank
    of an initialized torch.distributed group; each rank calibrates its shard of the batches, the
    statistics are all-reduced (`mcq.distributed`) and rank 0 writes `output`. Returns the path
    written (None on the other ranks)."""
    import mcq
    import mcq_format
    from mcq.capture import capture_causal_lm
    from mcq.examples import load_tokenizer

    cfg = config or default_config()  # the same recipe as `mcq quantize` without --preset
    pipeline.refuse_unsupported(cfg, 1, streaming=True)
    rank, size = dist.world(distributed)
    folder, out = Path(model_dir), Path(output)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a model folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: the output folder does not exist")
    checkpoint = Checkpoint(folder)
    model, buffers, aliases, transposed = meta_model(folder)
    captured = capture_causal_lm(model, progress=progress)
    tokenizer = load_tokenizer(folder)
    if samples is None:
        samples = mcq.token_samples(captured, tokenizer, data, seq_len, max_samples)
    source = TensorSource(checkpoint, captured.tensors, buffers, aliases, transposed)
    # rank 0 writes the file; the other ranks only calibrate (their statistics are all-reduced)
    with mcq_format.StreamWriter(out) if rank == 0 else contextlib.nullcontext() as writer:
        sink = WriterSink(writer) if writer is not None else None
        bundle_sections = pipeline.run(captured, cfg, samples, source, sink, tokenizer=tokenizer,
                                       batch_size=batch_size, progress=progress, qparams=qparams, rank=rank, size=size)
        if writer is not None:
            writer.finish(bundle_sections)
    if size > 1:  # every rank returns once rank 0 has written the bundle
        import torch.distributed

        torch.distributed.barrier()
    return out if rank == 0 else None
