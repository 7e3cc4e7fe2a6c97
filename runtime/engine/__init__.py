"""The native engine: a bundle's entry points as native programs (runtime/csrc), planned at
load from the graph sections and qformat with numpy only (`plan`), run in one native call each.

`Engine.run(name, inputs)` takes and returns numpy arrays. Entry points the engine cannot plan
(`Unsupported`: an op or quantized form it has no kernel for) are listed in `unsupported` with
the reason; callers run those on the reference path."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from runtime.engine.plan import plan
from runtime.engine.quant import CODE_NUMPY, Unsupported
from runtime.ir import Graph

__all__ = ["Engine", "Unsupported"]


class Engine:
    def __init__(self, graphs: Mapping[str, Graph], tensor: Callable[[str], np.ndarray],
                 qformat: Mapping[str, Any] | None, last_position_logits: Sequence[str] = (),
                 release: Callable[[str], None] | None = None) -> None:
        self.graphs = dict(graphs)
        self.programs: dict[tuple[str, bool], tuple[Any, list[int]]] = {}
        self.unsupported: dict[str, str] = {}
        self._tensor, self._qformat, self._release = tensor, qformat, release
        self._shared: dict[Any, Any] = {}  # packed weights and specs, shared by the entry points
        for name in self.graphs:
            try:
                self.program(name, name in last_position_logits)
            except Unsupported as e:
                self.unsupported[name] = str(e)

    def program(self, name: str, last_position_logits: bool = False) -> Any:
        return self._planned(name, last_position_logits)[0]

    def _planned(self, name: str, last_position_logits: bool) -> tuple[Any, list[int]]:
        key = (name, last_position_logits)
        if key not in self.programs:
            self.programs[key] = plan(self.graphs[name], self._tensor, self._qformat, self._shared,
                                      last_position_logits, self._release)
        return self.programs[key]


    def run(self, name: str, inputs: Sequence[np.ndarray], last_position_logits: bool = False,
            checked: int | None = None) -> list[np.ndarray]:
        """The entry point's outputs (numpy, in graph order) for inputs in graph order.
        `checked`: how many leading inputs to check against the graph's shapes (default all; the
        engine model's decode passes 1: the rest is its own cache, already of the right shapes)."""
        specs = self.graphs[name].inputs
        if len(inputs) != len(specs):
            raise ValueError(f"{name}: {len(inputs)} inputs given, the graph takes {len(specs)}")
        program, codes = self._planned(name, last_position_logits)
        args = []
        limit = len(specs) if checked is None else checked
        for i, (spec, code, x) in enumerate(zip(specs, codes, inputs)):
            a = np.asarray(x, dtype=CODE_NUMPY[code])  # strided views go in as they are
            if i < limit:
                if any(s < 0 for s in a.strides):
                    a = np.ascontiguousarray(a)
                if not spec.accepts(a.shape):
                    raise ValueError(f"{name}: input {spec.name!r} has shape {list(a.shape)}, the graph takes "
                                     f"{spec.shape}")
            args.append((a, code))
        out = program.run(args)
        return [np.frombuffer(data, dtype=CODE_NUMPY[code]).reshape(shape) for data, code, shape in out]

