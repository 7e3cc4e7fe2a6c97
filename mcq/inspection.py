"""What `mcq inspect` shows: a bundle's summary as a dict (the --json output) and as text lines.

Reads the container alone (mcq_format, numpy): no torch, no toolkit, so inspecting a bundle takes
a fraction of a second. The native engine's placement (--engine) imports the engine, never torch.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def summary(file: Path, engine: bool = False) -> dict[str, Any]:
    """Versions, entry points, quantized nodes by kind and dtype, tensor bytes by dtype, the
    per-node qformat (in the order the nodes run) and, with `engine`, where each entry point runs."""
    import mcq_format

    with mcq_format.read(file) as b:
        man = b.sections["manifest"]
        qf = b.sections.get("qformat") or {"nodes": {}}
        kinds = Counter(f"{e['kind']}:{(e.get('weight') or e['inputs'].get('x') or e['inputs'].get('a'))['dtype']}"
                        for e in qf["nodes"].values())
        sizes: Counter[str] = Counter()
        for name in b.tensor_names():
            info = b.tensor_info(name)
            sizes[info.dtype] += info.nbytes
        graph_nodes = {g: Counter(n["op"] for n in b.sections[ep["graph"]]["nodes"])
                       for g, ep in man["entry_points"].items()}
        report = {
            "file": str(file), "bytes": file.stat().st_size,
            "format_version": ".".join(map(str, man["format_version"])), "opset_version": man["opset_version"],
            "producer": man["producer"], "family": man["model"]["family"], "quant": man["quant"],
            "kv_cache": man.get("kv_cache"),
            "entry_points": {g: {"inputs": [f"{i['name']}:{i['dtype']}{i['shape']}" for i in ep["inputs"]],
                                 "outputs": [o["name"] for o in ep["outputs"]],
                                 "nodes": sum(graph_nodes[g].values())} for g, ep in man["entry_points"].items()},
            "quantized_nodes": dict(sorted(kinds.items())), "tensor_bytes_by_dtype": dict(sorted(sizes.items())),
            "qformat": {k: _describe(qf["nodes"][k]) for k in _graph_order(b.sections, man, qf["nodes"])},
        }
    if engine:
        report["engine"] = engine_placement(file)
    return report


def summary_lines(report: dict[str, Any], nodes: bool = False) -> list[str]:
    """`summary`'s dict as the text `mcq inspect` prints (about a dozen lines; `nodes`: the
    per-node qformat table after them)."""
    producer = report["producer"]
    lines = [f"{report['file']}  {report['bytes'] / 2**20:.2f} MiB  mcq {report['format_version']}, "
             f"opset {report['opset_version']}, by {producer['name']} {producer['version']}",
             f"model: {report['family']}" + (f"   kv cache: {report['kv_cache']}" if report["kv_cache"] else ""),
             "quant: " + quant_line(report["quant"])]
    for g, ep in report["entry_points"].items():
        lines += [f"entry point {g}: {ep['nodes']} nodes", f"  inputs  {_some(ep['inputs'])}",
                  f"  outputs {_some(ep['outputs'])}"]
    lines.append("quantized nodes:")
    lines += [f"  {k:<20} {v}" for k, v in report["quantized_nodes"].items()]
    lines.append("tensor bytes by dtype:")
    lines += [f"  {k:<8} {v / 2**20:10.2f} MiB" for k, v in report["tensor_bytes_by_dtype"].items()]
    for g, place in (report.get("engine") or {}).items():
        if place["runs_on"] == "native":
            fused = ", ".join(f"{k} x{v}" for k, v in place["engine_ops"].items())
            lines.append(f"native engine, {g}: {place['op_calls']} op calls ({fused})")
        else:
            lines.append(f"native engine, {g}: runs on the reference path: {place['why']}")
    if nodes and report["qformat"]:
        width = max(len(k) for k in report["qformat"])
        lines.append(f"{'qkey':<{width}}  {'kind':<8}  {'weight':<28}  inputs")
        lines += [f"{k:<{width}}  {d['kind']:<8}  {d['weight']:<28}  {d['inputs']}"
                  for k, d in report["qformat"].items()]
    return lines


def quant_line(quant: dict[str, Any]) -> str:
    """The recipe in one readable line: the settings that differ from the plain int8 config, the
    overrides counted (the full record is in --json)."""
    plain = {"weight_calib_method": "AMAX_SYM", "weight_dtype": "int8", "weight_granularity": "channel",
             "act_calib_method": "MINMAX_ASYM", "act_dtype": "int8", "act_granularity": "tensor", "kv_dtype": "int8",
             "percentile": 99.99, "weight_group_size": 128, "smoothquant_alpha": 0.5, "gptq_damp": 0.01,
             "gptq_fit_damp": 1.0, "auto_samples": 8, "attn_granularity": "tensor"}
    parts = [f"qlevel {quant.get('qlevel', 4)}"]
    for k, v in quant.items():
        if k in ("qlevel", "overrides", "search") or v in (None, False, 0, 0.0) or plain.get(k) == v:
            continue
        parts.append(f"{k}={v}")
    if quant.get("overrides"):
        parts.append(f"{len(quant['overrides'])} overrides")
    return ", ".join(parts)


def engine_placement(file: Path) -> dict[str, Any]:
    """Per entry point: whether the native engine runs it (qlevel 4), in how many op calls and
    which of the engine's own ops (fused chains, quantized linears), or why it falls back."""
    import mcq_format
    from runtime import native

    with mcq_format.read(file) as b:
        entry_points = list(b.sections["manifest"]["entry_points"])
        if not native.available():
            return {g: {"runs_on": "reference", "why": f"the native core is not built ({native.load_error()})"}
                    for g in entry_points}
        from runtime.engine import Engine
        from runtime.ir import Graph

        graphs = {g: Graph.decode(b.sections[ep["graph"]]) for g, ep in b.sections["manifest"]["entry_points"].items()}
        engine = Engine(graphs, b.tensor, b.sections.get("qformat"))
        out: dict[str, Any] = {}
        for g in entry_points:
            if g in engine.unsupported:
                out[g] = {"runs_on": "reference", "why": engine.unsupported[g]}
                continue
            ops = Counter(op for _, op, _ in engine.program(g).profile())
            out[g] = {"runs_on": "native", "op_calls": sum(ops.values()),
                      "engine_ops": dict(sorted((k, v) for k, v in ops.items() if k.startswith("mcq.")))}
        return out


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _graph_order(sections: dict[str, Any], manifest: dict[str, Any], qnodes: dict[str, Any]) -> list[str]:
    """qkeys in the order their nodes run (first entry point first), not msgpack's sorted order."""
    seen: dict[str, None] = {}
    for ep in manifest["entry_points"].values():
        for n in sections[ep["graph"]]["nodes"]:
            if n.get("qkey") in qnodes:
                seen.setdefault(n["qkey"], None)
    return [*seen, *(k for k in qnodes if k not in seen)]


def _spec_text(spec: dict[str, Any] | None) -> str:
    if not spec:
        return "-"
    gran = spec["granularity"] + (f"(axis {spec['axis']})" if spec.get("axis") is not None else "")
    extras = [name for name in ("smooth", "outliers") if spec.get(name)]
    if spec.get("source"):
        extras.append("from " + spec["source"].rsplit("/", 1)[-1])
    return f"{spec['dtype']} {gran} {spec['method']}" + (f" [{', '.join(extras)}]" if extras else "")


def _describe(entry: dict[str, Any]) -> dict[str, str]:
    inputs = "; ".join(f"{role}: {_spec_text(spec)}" for role, spec in entry["inputs"].items())
    return {"kind": entry["kind"], "weight": _spec_text(entry.get("weight")), "inputs": inputs or "-"}
