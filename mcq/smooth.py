"""SmoothQuant: move activation outliers into the weights, s[k] = amax_x[k]^a / amax_w[k]^(1-a).

One vector per group of linears reading the same tensor (q/k/v, gate/up), so that tensor is
quantized once. With alpha "auto", each group picks the alpha from a fixed grid that minimizes
the squared error of its quantized outputs on the calibration data (a second streaming pass:
errors are summed per batch, no activation is stored).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from mcq.observers import Observer, range_to_qparams
from runtime import lower, numerics
from runtime.ir import Graph
from runtime.numerics import QuantParams

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
MAX_TOKENS_PER_BATCH = 512  # the search looks at a bounded number of tokens per batch


def groups(graph: Graph, qformat: dict[str, Any]) -> list[list[str]]:
    """Smoothed linears grouped by the tensor they read, in graph order."""
    out: dict[Any, list[str]] = {}
    for n in graph.nodes:
        entry = qformat["nodes"].get(n.qkey) if n.qkey else None
        if entry and "smooth" in entry["inputs"].get("x", {}) and entry.get("weight"):
            out.setdefault(n.args[0], []).append(n.qkey)  # type: ignore[arg-type]
    return list(out.values())


def weight_names(graph: Graph) -> dict[str, str]:
    """qkey -> name of the float weight a linear reads in the captured graph."""
    from runtime.ir import TensorRef

    return {n.qkey: n.args[1].name for n in graph.nodes
            if n.qkey and n.op == "aten.linear.default" and isinstance(n.args[1], TensorRef)}


def vectors(graph: Graph, qformat: dict[str, Any], observers: dict[tuple[str, str], Observer],
            weight: Callable[[str], torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """qkey -> smoothing vector, shared inside each group; `alphas` is keyed by a group's first qkey."""
    out: dict[str, torch.Tensor] = {}
    for members in groups(graph, qformat):
        s = vector(observers[(members[0], "x")], [weight(k) for k in members], alphas[members[0]])
        out.update({k: s for k in members})
    return out


def vector(obs: Observer, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    assert obs.min is not None and obs.max is not None
    act = torch.maximum(obs.min.abs(), obs.max.abs())
    wmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = act.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)
    return torch.where((act > 0) & (wmax > 0), s, torch.ones_like(s)).to(torch.float32)


def input_qparams(obs: Observer, s: torch.Tensor, spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor parameters of x / s, exact from the per-channel ranges."""
    assert obs.min is not None and obs.max is not None
    return range_to_qparams((obs.min / s).min(), (obs.max / s).max(), spec["method"], spec["nbits"])


def _qp(scale: torch.Tensor, zp: torch.Tensor, spec: dict[str, Any], axis: int | None) -> QuantParams:
    qmin, qmax = numerics.qrange(spec["nbits"], spec["symmetric"])
    return QuantParams(scale, zp, qmin, qmax, axis)


def quantized_weight(w: torch.Tensor, s: torch.Tensor, wspec: dict[str, Any]) -> torch.Tensor:
    from mcq.observers import weight_qparams

    ws = w * s
    scale, zp = weight_qparams(ws, wspec["method"], wspec["granularity"], wspec["nbits"])
    return numerics.fake_quantize(ws, _qp(scale, zp, wspec, 0 if wspec["granularity"] == "channel" else None))


def search_alphas(graph: Graph, qformat: dict[str, Any], observers: dict[tuple[str, str], Observer],
                  weight: Callable[[str], torch.Tensor], tensors: Callable[[str], torch.Tensor],
                  batches: Iterable[torch.Tensor], progress: bool = True) -> dict[str, float]:
    """Per group (keyed by its first qkey), the grid alpha with the least output error."""
    from tqdm.auto import tqdm

    group_list = groups(graph, qformat)
    first = {g[0]: g for g in group_list}
    cands: dict[str, list[tuple[float, torch.Tensor, QuantParams, list[torch.Tensor]]]] = {}
    for key, members in first.items():
        obs = observers[(key, "x")]
        spec = qformat["nodes"][key]["inputs"]["x"]
        ws = [weight(k).to(torch.float32) for k in members]
        cands[key] = []
        for a in ALPHA_GRID:
            s = vector(obs, ws, a)
            scale, zp = input_qparams(obs, s, spec)
            wq = [quantized_weight(w, s, qformat["nodes"][k]["weight"]) for w, k in zip(ws, members)]
            cands[key].append((a, s, _qp(scale, zp, spec, None), wq))
    errors = {key: torch.zeros(len(ALPHA_GRID), dtype=torch.float64) for key in first}

    def observe(qkey: str, role: str, x: torch.Tensor) -> None:
        if role != "x" or qkey not in first:
            return
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)[:MAX_TOKENS_PER_BATCH]
        refs = [x @ weight(k).to(torch.float32).t() for k in first[qkey]]
        for i, (_, s, qp, wq) in enumerate(cands[qkey]):
            xq = numerics.fake_quantize(x / s, qp)
            errors[qkey][i] += sum(float(((xq @ w.t()) - r).pow(2).sum()) for w, r in zip(wq, refs))

    gm = lower.build(graph, tensors, qformat, lower.OBSERVE, observe)
    with torch.no_grad():
        for ids in tqdm(list(batches), desc="smoothquant search", unit="batch", disable=not progress):
            gm(ids, torch.ones_like(ids))
    return {key: ALPHA_GRID[int(torch.argmin(errors[key]))] for key in first}
