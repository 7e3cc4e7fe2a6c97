"""qlevel-2 calibration: run the main graph (prefill, or forward) with observers at every quant point.

A calibration batch is a tensor of token ids (run with an all-ones attention mask) or a tuple of
the graph's inputs."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Union

import torch
from tqdm.auto import tqdm

from mcq.capture import Captured
from mcq.gptq import Hessian
from mcq.observers import Observer
from runtime import lower


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


def calibrate(captured: Captured, qformat: dict[str, Any], batches: Iterable[Batch],
              progress: bool = True, hessians: dict[str, Hessian] | None = None
              ) -> dict[tuple[str, str], Observer]:
    """Observe every quant point of the main graph over `batches` (decode reuses prefill's keys).

    `hessians` (qkey -> Hessian, for GPTQ) are filled in the same pass."""
    observers = make_observers(qformat)
    hessians = hessians or {}
    if not observers and not hessians:
        return observers
    recorder = Recorder(observers, hessians)
    gm = lower.build(captured.main_graph, captured.tensors.__getitem__, qformat, lower.OBSERVE, recorder)
    batches = list(batches)
    with torch.no_grad():
        for i, batch in enumerate(tqdm(batches, desc="calibrating", unit="batch", disable=not progress)):
            recorder.batch = i
            gm(*as_inputs(batch))
    check_reached(observers)
    return observers


def transformed_wanted(qformat: dict[str, Any], chan: dict[str, Any]) -> set[str]:
    """Linears that need the histogram of the transformed input (second pass): histogram methods,
    and rotated inputs (whose range the per-channel ranges cannot give)."""
    from mcq.calibrators import HISTOGRAM_METHODS

    return {k for k in chan if qformat["nodes"][k]["inputs"]["x"]["method"] in HISTOGRAM_METHODS
            or "rotation" in qformat["nodes"][k]["inputs"]["x"]}


def calibrate_transformed(captured: Captured, qformat: dict[str, Any], chan: dict[str, Any],
                          observers: dict[tuple[str, str], Observer], batches: list[Batch],
                          progress: bool = True) -> None:
    """Second pass for histogram methods (and rotations) on inputs with a per-channel treatment:
    stream the histogram of the transformed tensor (outlier channels removed, divided by the
    smoothing, rotated)."""
    from mcq.calibrators import Histogram
    from mcq.channels import transformed_input

    wanted = transformed_wanted(qformat, chan)
    if not wanted:
        return
    for k in wanted:
        observers[(k, "x")].transformed = Histogram()

    def observe(qkey: str, role: str, x: torch.Tensor) -> None:
        if role == "x" and qkey in wanted:
            observers[(qkey, "x")].transformed.update(transformed_input(x, chan[qkey]))  # type: ignore[union-attr]

    gm = lower.build(captured.main_graph, captured.tensors.__getitem__, qformat, lower.OBSERVE, observe)
    with torch.no_grad():
        for batch in tqdm(batches, desc="calibrating (2nd pass)", unit="batch", disable=not progress):
            gm(*as_inputs(batch))


def shared_hessians(graph: Any, qformat: dict[str, Any]) -> dict[str, Hessian]:
    """One Hessian per distinct input tensor, for every linear whose weight spec asks for GPTQ."""
    by_input: dict[Any, Hessian] = {}
    out = {}
    for n in graph.nodes:
        entry = qformat["nodes"].get(n.qkey) if n.qkey else None
        if entry and (entry.get("weight") or {}).get("rounding") == "gptq":
            out[n.qkey] = by_input.setdefault(n.args[0], Hessian())
    return out
