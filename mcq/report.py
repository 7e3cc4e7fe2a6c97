"""Per-node error report: which quant points hurt, and what to keep in higher precision.

With the float model, for every quant point, on calibration-style data:
- local SQNR: its output with only its own inputs/weights quantized, from float inputs;
- cumulative SQNR: its output in the qlevel-2 model (everything up to it quantized),
both against the float model, in dB (10 log10 signal / noise).

From a bundle alone (no float model): the input SQNR of every activation quant point, in the
bundle's own qlevel-2 model (what survives of the tensor entering the quantizer, after outlier
channels and smoothing; weights need the float model, which the bundle does not hold).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import fx

from mcq.bundle import unrotate_name
from runtime import lower, numerics
from runtime.ir import Graph


@dataclass
class NodeError:
    qkey: str
    kind: str
    local_sqnr_db: float
    cumulative_sqnr_db: float


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise <= 0 else 10 * math.log10(max(signal, 1e-30) / noise)


class Tap(fx.Interpreter):
    """Runs a GraphModule and hands the values of chosen fx nodes (and their args) to a callback."""

    def __init__(self, gm: fx.GraphModule, wanted: dict[str, str], callback: Any) -> None:
        super().__init__(gm)
        self.wanted, self.callback = wanted, callback

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.callback(self.wanted[n.name], out, args)
        return out


def _table_name(entry: dict[str, Any]) -> str:
    return f"{entry['weight'].get('shared_with') or entry['qkey']}/weight"


def _local_output(entry: dict[str, Any], out: torch.Tensor, args: tuple[Any, ...], tensors: Any) -> torch.Tensor:
    """The node's output with only its own quantization applied to its float inputs."""
    qp = lambda spec: lower.quant_params(spec, tensors)  # noqa: E731
    if entry["kind"] == "kv_cache":
        return numerics.fake_quantize(out, qp(entry["inputs"]["x"]))
    if entry["kind"] == "embedding":
        spec = entry["weight"]
        table = lower.stored_weight(_table_name(entry), spec, tensors)
        table_qp, smooth = lower.table_params(spec, tensors)
        rows = numerics.embedding_rows(table, table_qp, args[1], smooth)
        if entry.get("unrotate"):  # rows of a rotated lm_head: the graph's next matmul turns them back
            rows = torch.matmul(rows, tensors(entry["unrotate"]))
        return rows
    if entry["kind"] == "bmm":
        return torch.bmm(numerics.fake_quantize(args[0], qp(entry["inputs"]["a"])), args[1])
    x, bias = args[0], (args[2] if len(args) > 2 else None)
    xspec = entry["inputs"].get("x")
    name = f"{entry['qkey']}/weight"
    w = numerics.dequantize(lower.stored_weight(name, entry["weight"], tensors), qp(entry["weight"])) \
        if entry.get("weight") else args[1]  # int4 unpacked from its two-per-byte layout
    xq = numerics.fake_quantize(x, qp(xspec)) if xspec else x
    y = torch.nn.functional.linear(xq, w, bias)
    if entry.get("outlier_weight"):
        y = y + numerics.outlier_product(x, qp(xspec), tensors(entry["outlier_weight"]))
    return y


def node_errors(float_graph: Graph, float_tensors: Any, quantized: Any, batches: Iterable[Any]) -> list[NodeError]:
    """Local and cumulative SQNR of every quantized node of the main graph (graph order);
    `batches` as for calibration (token ids, or tuples of the graph's inputs)."""
    from mcq.calibrate import as_inputs

    qformat = quantized.sections["qformat"]
    qnodes = {k: {**v, "qkey": k} for k, v in qformat["nodes"].items()}
    ir_of = {n.name: n.qkey for n in float_graph.nodes if n.qkey in qnodes}
    order = list(dict.fromkeys(ir_of.values()))
    fgm, fnames = lower.build_with_names(float_graph, float_tensors, None, lower.FLOAT)
    qgraph = Graph.decode(quantized.sections[f"graph/{float_graph.name}"])
    for entry in qnodes.values():  # a token table tied to a rotated lm_head (mcq.bundle.store_embedding)
        tied = (entry.get("weight") or {}).get("shared_with")
        if entry["kind"] == "embedding" and tied and (qnodes[tied]["inputs"].get("x") or {}).get("rotation"):
            entry["unrotate"] = unrotate_name(entry["qkey"])
    qgm, qnames = lower.build_with_names(qgraph, quantized.tensors.__getitem__, qformat, 2)
    unmatched = [ir for ir in ir_of if ir not in qnames]
    if unmatched or set(qformat["nodes"]) - set(ir_of.values()):
        raise ValueError(f"the bundle's graph does not match this model (e.g. node {(unmatched or ['?'])[0]!r}, "
                         f"quant points {sorted(set(qformat['nodes']) - set(ir_of.values()))[:3]}): "
                         "was it quantized from this model?")
    stats = {k: [0.0, 0.0, 0.0] for k in order}  # signal, local noise, cumulative noise
    tensors = quantized.tensors.__getitem__
    for batch in batches:
        inputs = as_inputs(batch)
        reference: dict[str, torch.Tensor] = {}

        def on_float(qkey: str, out: torch.Tensor, args: tuple[Any, ...]) -> None:
            out = out.detach().to(torch.float32)
            reference[qkey] = out
            local = _local_output(qnodes[qkey], out, args, tensors).to(torch.float32)
            stats[qkey][0] += float(out.pow(2).sum())
            stats[qkey][1] += float((local - out).pow(2).sum())

        def on_quant(qkey: str, out: torch.Tensor, args: tuple[Any, ...]) -> None:
            stats[qkey][2] += float((out.detach().to(torch.float32) - reference[qkey]).pow(2).sum())

        with torch.no_grad():
            Tap(fgm, {fnames[ir]: k for ir, k in ir_of.items()}, on_float).run(*inputs)
            Tap(qgm, {qnames[ir]: k for ir, k in ir_of.items()}, on_quant).run(*inputs)
    return [NodeError(k, qnodes[k]["kind"], _db(s, ln), _db(s, cn)) for k, (s, ln, cn) in stats.items()]


@dataclass
class InputError:
    qkey: str
    kind: str
    role: str  # the quantized input: "x" (linear, kv cache), "a" / "b" (bmm)
    input_sqnr_db: float


def input_errors(sections: dict[str, Any], tensors: Any, batches: Iterable[Any]) -> list[InputError]:
    """Input SQNR of every activation quant point of a bundle's main graph, from the bundle alone
    (`tensors`: name -> torch tensor); `batches` as for calibration."""
    from mcq.calibrate import as_inputs

    qformat = sections["qformat"]
    entry_points = sections["manifest"]["entry_points"]
    main = "prefill" if "prefill" in entry_points else next(iter(entry_points))
    graph = Graph.decode(sections[entry_points[main]["graph"]])
    gm, points = lower.build_with_fake_quant_points(graph, tensors, qformat)
    targets = {n.name: n.target for n in gm.graph.nodes if n.name in points}
    stats: dict[tuple[str, str], list[float]] = {points[n]: [0.0, 0.0] for n in points}

    def on_point(name: str, out: torch.Tensor, args: tuple[Any, ...]) -> None:
        x = numerics.quantizer_input(args[0].detach(), gm.get_submodule(str(targets[name])).qp)
        stats[points[name]][0] += float(x.pow(2).sum())
        stats[points[name]][1] += float((out.detach().to(torch.float32) - x).pow(2).sum())

    for batch in batches:
        with torch.no_grad():
            Tap(gm, {n: n for n in points}, on_point).run(*as_inputs(batch))
    return [InputError(qkey, qformat["nodes"][qkey]["kind"], role, _db(sig, noise))
            for (qkey, role), (sig, noise) in stats.items()]


def suggest_overrides(errors: list[Any], top: int, qformat: dict[str, Any]) -> list[dict[str, Any]]:
    """Overrides that keep the `top` worst nodes (lowest local, or input, SQNR) in higher
    precision, each `mcq.search.raise_precision`'s step for its entry in the bundle's `qformat`
    (int4 weights of a weight-only linear go to int8: a float input would change nothing there);
    a node listed once even when several of its inputs are among the worst."""
    from mcq.search import raise_precision

    worst = list({e.qkey: e for e in sorted(errors, key=_score, reverse=True)}.values())
    return [raise_precision(e.qkey, qformat["nodes"][e.qkey]).to_dict() for e in sorted(worst, key=_score)[:top]]


def _score(e: Any) -> float:
    return e.input_sqnr_db if isinstance(e, InputError) else e.local_sqnr_db


def worst(errors: list[Any], top: int) -> list[Any]:
    return sorted(errors, key=_score)[:top]


def to_json(errors: list[Any], overrides: list[dict[str, Any]]) -> dict[str, Any]:
    measure = "input" if errors and isinstance(errors[0], InputError) else "local+cumulative"
    return {"measure": measure, "nodes": [asdict(e) for e in errors], "suggested_overrides": overrides}


def plot(errors: list[Any], path: str) -> None:
    from mcq.extras import require

    require("matplotlib", "the PNG plot (--png)").use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(8, len(errors) * 0.05), 4))
    x = range(len(errors))
    if errors and isinstance(errors[0], InputError):
        ax.plot(x, [e.input_sqnr_db for e in errors], ".", label="input")
    else:
        ax.plot(x, [e.local_sqnr_db for e in errors], ".", label="local")
        ax.plot(x, [e.cumulative_sqnr_db for e in errors], "-", label="cumulative")
    ax.set_xlabel("quant point (execution order)")
    ax.set_ylabel("SQNR (dB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
