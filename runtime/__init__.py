"""mcq runtime: load a `.mcq` bundle and run it (any entry point; prefill, decode, generate for
causal LMs; embed for encoders).

Imports torch, numpy, msgpack, safetensors-compatible `mcq_format` (and `tokenizers` for text);
never the toolkit or transformers.
"""
from __future__ import annotations

import gc
import os
from typing import Callable

import torch

import mcq_format

from runtime.lower import numpy_to_torch
from runtime.memory import release_free_heap
from runtime.model import EntryPointError, KVCache, Model, from_sections

__all__ = ["EntryPointError", "KVCache", "Model", "load", "tensor_source"]

_BIT_VIEWS = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn}


def tensor_source(bundle: mcq_format.Bundle) -> Callable[[str], torch.Tensor]:
    """name -> torch tensor of an open bundle: zero-copy views of the memory map."""

    def tensor(name: str) -> torch.Tensor:
        t = numpy_to_torch(bundle.tensor(name))
        # dtypes numpy lacks come as same-size unsigned bits: reinterpret, no copy
        viewed = _BIT_VIEWS.get(bundle.tensor_info(name).dtype)
        return t.view(viewed) if viewed is not None else t

    # lowering calls this for a tensor it copied into a kernel's layout (W4A16's packed weights):
    # its file pages leave resident memory instead of staying beside the copy
    tensor.release = bundle.release_pages  # type: ignore[attr-defined]
    return tensor


def load(path: str | os.PathLike[str], qlevel: int | None = None, compile: bool = False) -> Model:
    """Open and validate a bundle, rebuild its graphs at `qlevel` (default: the bundle's own).

    compile=True compiles each entry point with Inductor at its first call for each input
    pattern (fused float glue, 1.5-4x faster decode on SmolLM2, outputs equal to the
    interpreted graph's bit for bit; one to three minutes per pattern cold, less with Inductor's
    disk cache warm; the interpreted graph is the fallback, see `runtime.compiled`). Weights stay
    memory-mapped from the file either way. The graph sections are released once decoded
    (`model.bundle.sections` keeps the other sections)."""
    # the cyclic garbage collector would walk the growing object graph (decoded sections, fx
    # nodes) again and again while nothing here is garbage: 0.7 s of a 1.8 s load on SmolLM2
    collecting = gc.isenabled()
    gc.disable()
    try:
        bundle = mcq_format.read(path)
        model = from_sections(bundle.sections, tensor_source(bundle), qlevel, compile)
        # the model holds its graphs decoded (runtime.ir): the msgpack form is dead weight (6 MiB
        # of small Python objects on SmolLM2)
        for ep in bundle.sections["manifest"]["entry_points"].values():
            bundle.sections.pop(ep["graph"], None)
    finally:
        if collecting:
            gc.enable()
    model.bundle = bundle  # keeps the memory map open for the model's lifetime
    release_free_heap()
    return model
