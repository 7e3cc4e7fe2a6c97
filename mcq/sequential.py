"""Sequential GPTQ (`gptq_sequential`): requantize the weights in graph order on the inputs the
quantized model really gives them.

The first pass rounds every weight on its float model input. The refinement pass runs the
qlevel-2 model one node at a time over all calibration batches; when a linear's input
is known on every batch, it re-solves that linear's GPTQ problem with
- the Hessian of that quantized input (upstream error and its own activation quantizer included),
- the target W* that best maps it to the float model's output (`mcq.gptq`: cross moments),
and the downstream nodes then run on the new weight. Layer by layer, so each linear corrects the
error its inputs actually carry, not an error that the layers before it no longer make.
The weight's scales are calibrated again on the fitted weight; activation parameters stay those
of the first pass. A second refinement would change nothing: the first layer's input does not
depend on any weight GPTQ rounds, and each later one only on the weights before it.

Memory: the float model's input of every such linear, for all batches, is held until that linear
is solved (1.4 GB for SmolLM2-135M on 3,584 calibration tokens); in-memory quantize only.
"""
from __future__ import annotations

from typing import Any

import torch

from mcq.bundle import Assembled, node_plan, store_weight
from mcq.calibrate import Batch, ancestors, as_inputs, run_by_node
from mcq.capture import Captured
from mcq.gptq import CrossHessian
from mcq.report import Tap
from runtime import lower, numerics


def quantized_input(x: torch.Tensor, spec: dict[str, Any] | None, tensors: Any) -> torch.Tensor:
    """What a linear's weight really multiplies, in its float input's space: the input after its
    quantizer (x itself for weight-only linears); outlier channels reach the float side product."""
    if spec is None:
        return x
    qp = lower.quant_params(spec, tensors)
    u = numerics.fake_quantize(x.to(torch.float32), qp)
    if qp.rotation is not None:
        u = numerics.unrotate(u, qp.rotation)
    if qp.smooth is not None:
        u = u * qp.smooth
    if qp.outliers is not None:
        u = u.index_copy(-1, qp.outliers, x.to(torch.float32).index_select(-1, qp.outliers))
    return u


def gptq_readers(captured: Captured, qformat: dict[str, Any]) -> dict[str, list[str]]:
    """Graph node -> the GPTQ-rounded linears reading it. A linear whose stored weight is also a
    token table (tied embeddings) keeps its first-pass weight: the table fed every layer already."""
    tied = {(e.get("weight") or {}).get("shared_with") for e in qformat["nodes"].values()
            if e["kind"] == "embedding"}
    readers: dict[str, list[str]] = {}
    for n in captured.main_graph.nodes:
        entry = qformat["nodes"].get(n.qkey) if n.qkey else None
        if entry and entry["kind"] == "linear" and (entry.get("weight") or {}).get("rounding") == "gptq" \
                and n.qkey not in tied:
            readers.setdefault(n.args[0].name, []).append(n.qkey)
    return readers


def float_inputs(captured: Captured, names: list[str], batches: list[Batch],
                 progress: bool = False) -> dict[str, list[torch.Tensor]]:
    """The float model's value of each named graph node, per batch."""
    from tqdm.auto import tqdm

    gm, fx_names = lower.build_with_names(captured.main_graph, captured.tensors.__getitem__, None, lower.FLOAT)
    values: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for batch in tqdm(batches, desc="GPTQ refinement: float inputs", unit="batch", disable=not progress):
            Tap(gm, {fx_names[n]: n for n in names},
                lambda name, out, args: values[name].append(out.detach())).run(*as_inputs(batch))
    return values


def refine(captured: Captured, assembled: Assembled, float_weight: Any, chan: dict[str, Any], imported: Any,
           batches: list[Batch], damp: float, fit_damp: float, progress: bool = True,
           act_order: bool | None = None) -> None:
    """The refinement pass over `assembled` (its GPTQ weights replaced in place); `float_weight`:
    qkey -> the linear's float weight."""
    qformat = assembled.qformat
    readers = gptq_readers(captured, qformat)
    reference = float_inputs(captured, list(readers), batches, progress)
    tensors = assembled.tensors
    gm, names, attrs = lower.build_with_attrs(assembled.graphs[captured.main_graph.name], tensors.__getitem__,
                                              qformat, 2)
    by_fx = {names[n]: n for n in readers}
    replaced: dict[int, torch.Tensor] = {}  # id(the weight the graph was built with) -> requantized

    def requantize(node: Any, values: list[Any]) -> None:
        name = by_fx.get(node.name)
        if name is None:
            return
        shared: dict[Any, CrossHessian] = {}  # weight-only linears reading one tensor share the sums
        for qkey in readers[name]:
            entry = qformat["nodes"][qkey]
            spec = entry["inputs"].get("x")
            pair = shared.setdefault(qkey if spec else None, CrossHessian())
            if pair.cross is None:
                for x, xq in zip(reference[name], values):
                    pair.update(x, quantized_input(xq, spec, tensors.__getitem__))
            store_weight(tensors, qkey, entry, float_weight(qkey), node_plan(qkey, chan, imported),
                         pair.problem(damp, fit_damp, act_order), imported)
            wspec = entry["weight"]
            stand_in = getattr(gm, attrs[f"{qkey}/weight#dequantized"])
            replaced[id(stand_in)] = numerics.dequantize(
                lower.stored_weight(f"{qkey}/weight", wspec, tensors.__getitem__),
                lower.quant_params(wspec, tensors.__getitem__))
        del reference[name]

    roots = [n for n in gm.graph.nodes if n.name in by_fx]
    with torch.no_grad():
        run_by_node(gm, [as_inputs(b) for b in batches], lambda s: replaced.get(id(s), s), lambda s: None,
                    lambda b: None, requantize, progress, needed=ancestors(roots), desc="GPTQ refinement")
