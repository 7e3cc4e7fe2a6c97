"""mcq runtime: load a `.mcq` bundle and run it (any entry point; prefill, decode, generate for
causal LMs; embed for encoders).

Two execution paths (spec "Qlevels"): the reference path rebuilds the graphs as torch.fx at
qlevel 2/3/4 (torch tensors in and out); the native engine (`engine="native"`, runtime.engine)
runs a bundle's qlevel-4 graphs as native programs on numpy arrays, with no torch imported.
Imports numpy, msgpack, `mcq_format` and `tokenizers`; torch only for the reference path;
never the toolkit or transformers.
"""
from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mcq_format

if TYPE_CHECKING:
    import torch

    from runtime.engine.model import EngineModel
    from runtime.model import EntryPointError, KVCache, Model

__all__ = ["EntryPointError", "KVCache", "Model", "load", "tensor_source"]

ENGINES = ("reference", "native", "auto")
# the default when load() is not told (engine=None): "reference" here switches the engine off for a
# whole process, e.g. the CI's run of the suite on the reference path
ENGINE_ENV = "MCQ_ENGINE"
_LAZY = {"EntryPointError": "runtime.batching", "KVCache": "runtime.model", "Model": "runtime.model"}


def __getattr__(name: str) -> Any:
    # the reference path's names import torch: only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


def tensor_source(bundle: mcq_format.Bundle) -> Callable[[str], torch.Tensor]:
    """name -> torch tensor of an open bundle: zero-copy views of the memory map."""
    import torch

    from runtime.lower import numpy_to_torch

    bit_views = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn}

    def tensor(name: str) -> torch.Tensor:
        t = numpy_to_torch(bundle.tensor(name))
        # dtypes numpy lacks come as same-size unsigned bits: reinterpret, no copy
        viewed = bit_views.get(bundle.tensor_info(name).dtype)
        return t.view(viewed) if viewed is not None else t

    # lowering calls this for a tensor it copied into a kernel's layout (W4A16's packed weights):
    # its file pages leave resident memory instead of staying beside the copy
    tensor.release = bundle.release_pages  # type: ignore[attr-defined]  # an attribute on a function
    return tensor


_warned_fallback: set[str] = set()


def _has_weight_only(qformat: Any) -> bool:
    nodes = (qformat or {}).get("nodes", {})
    return any(isinstance(q, dict) and q.get("kind") == "linear" and q.get("weight")
               and not (q.get("inputs") or {}).get("x") for q in nodes.values())


def _native_model(bundle: mcq_format.Bundle, qlevel: int | None, compile: bool, engine: str,
                  default: bool = False) -> EngineModel | None:
    """The bundle on the native engine, or None (engine="auto": the reason is warned once; the
    default: quietly, unless the native core is missing)."""
    from runtime import native

    why = None
    bundle_qlevel = int(bundle.sections["manifest"].get("quant", {}).get("qlevel", 4))
    if default and ((qlevel if qlevel is not None else bundle_qlevel) != 4 or compile
                    or not (bundle.sections.get("qformat") or {}).get("nodes")):
        return None  # the engine is the default at qlevel 4 only; other qlevels are the reference's
    if compile:
        why = "compile=True is a reference-path option"
    elif ((qlevel if qlevel is not None else bundle_qlevel) not in (3, 4)
          and (bundle.sections.get("qformat") or {}).get("nodes")):
        why = f"the engine runs qlevel 4 (equal to 3), not {qlevel if qlevel is not None else bundle_qlevel}"
    elif qlevel == 3 and _has_weight_only(bundle.sections.get("qformat")):
        why = ("qlevel 3 runs weight-only linears as the exact float32 product; the engine's weight-only "
               "kernel is qlevel 4's (spec Q.4a)")
    elif not native.available():
        why = f"the native core is not built ({native.load_error()})"
    if why is None:
        from runtime.engine import Unsupported
        from runtime.engine.model import EngineModel

        try:
            return EngineModel(bundle.sections, bundle)
        except Unsupported as e:
            why = str(e)
    if engine == "native":
        raise ValueError(f"{bundle.path}: cannot run on the native engine: {why}")
    if default and native.available():
        return None  # a graph the engine does not run: the reference path runs it, as it always has
    if why not in _warned_fallback:
        _warned_fallback.add(why)
        warnings.warn(f"running the reference path: {why}", RuntimeWarning, stacklevel=3)
    return None


def load(path: str | os.PathLike[str], qlevel: int | None = None, compile: bool = False,
         engine: str | None = None) -> Model | EngineModel:
    """Open and validate a bundle, rebuild its graphs at `qlevel` (default: the bundle's own).

    engine=None (default): the native engine at qlevel 4 where it runs the bundle's graphs, else
    the reference path, quietly (a missing native core is warned once); $MCQ_ENGINE names another
    default. engine="reference": the graphs as torch.fx (torch tensors in and out; the spec's
    numerics, at any qlevel). engine="native": the native engine (runtime.engine: numpy arrays in
    and out, no torch; a ValueError names what it cannot run); engine="auto": native where it
    can, else the reference path with a warning naming why. compile=True (reference path,
    deprecated: the engine is faster with no compile step) compiles each entry point with
    Inductor at its first call for each input pattern. Weights stay memory-mapped from the file
    (the engine packs its int8 weights once and releases their file pages). The graph sections
    are released once decoded (`model.bundle.sections` keeps the other sections)."""
    source, default = "engine", False
    if engine is None:  # the default: "auto" falls back quietly
        source, engine = f"${ENGINE_ENV}", os.environ.get(ENGINE_ENV) or "auto"
        default = engine == "auto"
    if engine not in ENGINES:
        raise ValueError(f"{source} must be one of {', '.join(ENGINES)}, got {engine!r}")
    if compile:
        warnings.warn("compile=True is deprecated and will be removed: the native engine (the default at "
                      "qlevel 4) runs faster with no compile step", DeprecationWarning, stacklevel=2)
    # the cyclic garbage collector would walk the growing object graph (decoded sections, fx
    # nodes) again and again while nothing here is garbage: a large share of a load's time
    collecting = gc.isenabled()
    gc.disable()
    try:
        bundle = mcq_format.read(path)
        model: Model | EngineModel | None = (_native_model(bundle, qlevel, compile, engine, default)
                                             if engine != "reference" else None)
        if model is None:
            from runtime.model import from_sections

            model = from_sections(bundle.sections, tensor_source(bundle), qlevel, compile)
        # the model holds its graphs decoded: the msgpack form is dead weight (megabytes of small
        # Python objects)
        for ep in bundle.sections["manifest"]["entry_points"].values():
            bundle.sections.pop(ep["graph"], None)
    finally:
        if collecting:
            gc.enable()
    model.bundle = bundle  # keeps the memory map open for the model's lifetime
    from runtime.memory import release_free_heap

    release_free_heap()
    return model
