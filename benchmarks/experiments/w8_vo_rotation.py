"""Experiment (not run by CI): W8A8KV8 on SmolLM2 with each attention head's value / output
projection pair rotated by a fixed orthogonal matrix H before capture (v_proj rows by H^T, o_proj
columns by H, per head; the float model is the same function): the int8 V cache and o_proj's
per-tensor input then see each head's channels mixed, so no channel's outliers set the range.

    PYTHONPATH=. python benchmarks/experiments/w8_vo_rotation.py --config CONFIG.yaml \\
        --out /tmp/vo.mcq --texts devs [--hadamard]

Prints perplexity per text and pooled beside fp32 (the unrotated float model), as
heldout_smollm2.py does; the bundle is kept at --out (cached: delete it to quantize again).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def orthogonal(n: int, seed: int, hadamard: bool) -> torch.Tensor:
    if hadamard and n & (n - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        return h / math.sqrt(n)
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def rotate_vo(model: torch.nn.Module, hadamard: bool) -> None:
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    h = orthogonal(d, 2, hadamard)
    with torch.no_grad():
        for layer in model.model.layers:
            at = layer.self_attn
            hv = torch.block_diag(*[h] * kv)
            ho = torch.block_diag(*[h] * heads)
            at.v_proj.weight.data = (hv.t() @ at.v_proj.weight.data.to(torch.float64)).float()
            at.o_proj.weight.data = (at.o_proj.weight.data.to(torch.float64) @ ho).float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--texts", default="devs")
    ap.add_argument("--hadamard", action="store_true")
    args = ap.parse_args()

    from heldout_smollm2 import _texts

    import mcq
    import runtime
    from mcq.evaluate import EagerPrefill, window_nll
    from mcq.examples import load_example

    torch.manual_seed(0)
    model, tok = load_example("smollm2")
    model.eval()
    ids = {p.stem: tok(p.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
           for p in _texts(args.texts)}
    base = {k: window_nll(EagerPrefill(model), v) for k, v in ids.items()}
    rotate_vo(model, args.hadamard)
    if not args.out.exists():
        cfg = mcq.QuantConfig.from_yaml(args.config)
        mcq.quantize(mcq.capture_model(model), cfg, tokenizer=tok).save(args.out)
    m = runtime.load(args.out)
    got = {k: window_nll(m, v) for k, v in ids.items()}

    def pooled(r: dict) -> float:
        return sum(a for a, _ in r.values()) / sum(n for _, n in r.values())

    cells = [f"{k} {100 * (math.exp(got[k][0] / got[k][1] - base[k][0] / base[k][1]) - 1):+.2f} %" for k in ids]
    total = 100 * (math.exp(pooled(got) - pooled(base)) - 1)
    print(f"{args.out.name}: " + ", ".join(cells) + f"; pooled {total:+.2f} %")


if __name__ == "__main__":
    main()
