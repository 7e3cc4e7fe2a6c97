"""qlevel-2 calibration: run the main graph (prefill, or forward) with observers at every quant point.

The graph runs one node at a time over every batch at once (`run_by_node`), so that each
linear's input is complete, on every batch, at one moment: its weight is quantized then and
released (`mcq.pipeline`). A calibration batch is a tensor of token ids (run with an all-ones
attention mask) or a tuple of the graph's inputs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Union

import torch
from torch import fx
from tqdm.auto import tqdm

from mcq.gptq import Hessian
from mcq.observers import Observer
from runtime.quant_modules import Observe


Batch = Union[torch.Tensor, Sequence[torch.Tensor]]


def as_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    """The graph inputs of one calibration batch: token ids get an all-ones attention mask."""
    return (batch, torch.ones_like(batch)) if isinstance(batch, torch.Tensor) else tuple(batch)


def make_observers(qformat: dict[str, Any]) -> dict[tuple[str, str], Observer]:
    observers = {}
    for qkey, entry in qformat["nodes"].items():
        for role, spec in entry["inputs"].items():
            if spec.get("source"):
                continue  # derived from another quant point's parameters
            axis = spec["axis"] if spec["granularity"] == "channel" else None
            if "smooth" in spec or "outliers" in spec or "rotation" in spec:
                axis = -1  # per-channel treatments need per-input-channel ranges
            if spec["granularity"] == "head":
                axis = 0
            observers[(qkey, role)] = Observer(axis, spec["method"], spec.get("percentile", 99.99),
                                               heads=spec.get("heads") if spec["granularity"] == "head" else None)
    return observers


def batches_of(samples: Sequence[Sequence[int]], batch_size: int) -> list[torch.Tensor]:
    """Group token sequences into batches of equal length (no padding ever reaches an observer)."""
    by_len: dict[int, list[Sequence[int]]] = {}
    for s in samples:
        by_len.setdefault(len(s), []).append(s)
    out = []
    for length in sorted(by_len):  # deterministic order
        group = by_len[length]
        for i in range(0, len(group), batch_size):
            out.append(torch.tensor(group[i : i + batch_size], dtype=torch.long))
    return out


class Recorder:
    """The observe callback of a calibration pass: updates the observers and the GPTQ Hessians.

    Linears reading the same tensor share one Hessian object: it takes each batch once (the first
    linear to report it), whichever order batches and nodes run in (`batch` is set by the caller)."""

    def __init__(self, observers: dict[tuple[str, str], Observer], hessians: dict[str, Hessian]) -> None:
        self.observers, self.hessians = observers, hessians
        self.batch = 0
        self._seen: set[tuple[int, int]] = set()

    def __call__(self, qkey: str, role: str, x: torch.Tensor) -> None:
        obs = self.observers.get((qkey, role))
        if obs is not None:
            obs.update(x)
        h = self.hessians.get(qkey) if role == "x" else None
        if h is not None and (id(h), self.batch) not in self._seen:
            self._seen.add((id(h), self.batch))
            h.update(x)


def check_reached(observers: dict[tuple[str, str], Observer]) -> None:
    missing = [f"{k}:{r}" for (k, r), o in observers.items() if o.min is None]
    if missing:
        raise RuntimeError(f"calibration never reached quant points: {', '.join(missing[:5])}")


def transformed_wanted(qformat: dict[str, Any], chan: dict[str, Any]) -> set[str]:
    """Linears that need the histogram of the transformed input (`mcq.pipeline`): histogram methods,
    and rotated inputs (whose range the per-channel ranges cannot give)."""
    from mcq.calibrators import HISTOGRAM_METHODS

    return {k for k in chan if qformat["nodes"][k]["inputs"]["x"]["method"] in HISTOGRAM_METHODS
            or "rotation" in qformat["nodes"][k]["inputs"]["x"]}


def shared_hessians(graph: Any, qformat: dict[str, Any]) -> dict[str, Hessian]:
    """One Hessian per distinct input tensor, for every linear whose weight spec asks for GPTQ."""
    by_input: dict[Any, Hessian] = {}
    out = {}
    for n in graph.nodes:
        entry = qformat["nodes"].get(n.qkey) if n.qkey else None
        if entry and (entry.get("weight") or {}).get("rounding") == "gptq":
            out[n.qkey] = by_input.setdefault(n.args[0], Hessian())
    return out


def observed_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes that lead to an Observe module: all that calibration needs to run (not the
    logits, nor the cache outputs)."""
    modules = dict(gm.named_modules())
    return ancestors([n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], Observe)])


def ancestors(roots: Sequence[fx.Node]) -> set[fx.Node]:
    """`roots` and every node they read, directly or not."""
    needed: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    return needed


def run_by_node(gm: fx.GraphModule, inputs: Sequence[tuple[Any, ...]], fetch: Callable[[Any], Any],
                release: Callable[[Any], None], before: Callable[[int], None],
                after: Callable[[fx.Node, list[Any]], None], progress: bool = True,
                needed: set[fx.Node] | None = None, desc: str = "calibrating") -> None:
    """Run `gm` one node at a time over every input tuple (one per batch).

    A get_attr node's value is `fetch(its stand-in tensor)`, one for all batches, and
    `release(stand-in)` follows its last use; every other value is dropped after its last use. Only
    the `needed` nodes run (default: `observed_nodes`). `before(b)` runs before each batch's call
    of a node, `after(node, values)` once a node (or a graph input) has its value on every batch."""
    nodes = list(gm.graph.nodes)
    modules = dict(gm.named_modules())
    needed = observed_nodes(gm) if needed is None else needed
    last: dict[fx.Node, int] = {}
    for i, n in enumerate(nodes):
        if n in needed:
            last[n] = i  # a value nobody reads is dropped at once
            for a in n.all_input_nodes:
                last[a] = i
    for n in reversed(nodes):  # a weight lives as long as its widened copy (released together)
        if n in last and n.op == "call_function" and n.all_input_nodes \
                and all(a.op == "get_attr" for a in n.all_input_nodes):
            for a in n.all_input_nodes:
                last[a] = max(last[a], last[n])
    dying: dict[int, list[fx.Node]] = {}
    for n, i in last.items():
        dying.setdefault(i, []).append(n)
    per_batch: dict[fx.Node, list[Any]] = {}
    shared: dict[fx.Node, Any] = {}
    placeholders = iter(range(len(inputs[0]) if inputs else 0))
    for i, n in enumerate(tqdm(nodes, desc=desc, unit="node", disable=not progress)):
        if n.op == "placeholder":
            k = next(placeholders)
            if n in needed:
                per_batch[n] = [b[k] for b in inputs]
                after(n, per_batch[n])
        elif n not in needed or n.op == "output":
            pass
        elif n.op == "get_attr":
            shared[n] = fetch(getattr(gm, str(n.target)))
        elif n.op in ("call_function", "call_module") and n.all_input_nodes \
                and all(a in shared for a in n.all_input_nodes):
            # reads only weights (a float64 copy for calibration, `lower.widen`): one value for
            # all batches, not one copy per batch
            fn = modules[n.target] if n.op == "call_module" else n.target
            shared[n] = fn(*fx.node.map_arg(n.args, shared.__getitem__), **fx.node.map_arg(n.kwargs, shared.__getitem__))  # type: ignore[operator]
            after(n, [shared[n]] * len(inputs))
        elif n.op in ("call_function", "call_module"):
            fn = modules[n.target] if n.op == "call_module" else n.target
            outs = []
            for b in range(len(inputs)):
                pick = lambda a: shared[a] if a in shared else per_batch[a][b]  # noqa: E731
                before(b)
                outs.append(fn(*fx.node.map_arg(n.args, pick), **fx.node.map_arg(n.kwargs, pick)))  # type: ignore[operator]
            per_batch[n] = outs
            after(n, outs)
        else:
            raise RuntimeError(f"node-by-node calibration: unsupported fx node {n.op} {n.target}")
        for a in dying.get(i, ()):
            per_batch.pop(a, None)
            if a in shared:
                del shared[a]
                if a.op == "get_attr":
                    release(getattr(gm, str(a.target)))
