"""mcq runtime: load a `.mcq` bundle and run it (prefill, decode, generate).

Imports torch, numpy, msgpack, safetensors-compatible `mcq_format` (and `tokenizers` for text);
never the toolkit or transformers.
"""
from __future__ import annotations

import os
from typing import Any

import mcq_format

from runtime.ir import Graph
from runtime.lower import numpy_to_torch
from runtime.model import KVCache, Model
from runtime.tokenizer import Tokenizer

__all__ = ["KVCache", "Model", "load"]


def load(path: str | os.PathLike[str], qlevel: int | None = None) -> Model:
    """Open and validate a bundle, rebuild its graphs at `qlevel` (default: the bundle's own)."""
    bundle = mcq_format.read(path)
    sections: dict[str, Any] = bundle.sections
    manifest = sections["manifest"]
    graphs = {name: Graph.decode(sections[ep["graph"]]) for name, ep in manifest["entry_points"].items()}
    qformat = sections.get("qformat")
    tok = Tokenizer(sections["tokenizer"]) if sections.get("tokenizer") else None
    if qlevel is None:
        qlevel = int(manifest.get("quant", {}).get("qlevel", 0))
    if not (qformat or {}).get("nodes"):
        qlevel = 0  # nothing is quantized: every qlevel is the float graph
    model = Model(graphs, lambda name: numpy_to_torch(bundle.tensor(name)), qformat, manifest, tok, qlevel)
    model.bundle = bundle  # keeps the memory map open for the model's lifetime
    return model
