"""Experiment: QuaRot-style residual rotation (norm weights folded) + per-head V/O rotation, then mcq."""
import math, sys, time
from pathlib import Path
import os
import tempfile

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mcq, runtime
from mcq.examples import load_example
from mcq.evaluate import window_nll, EagerPrefill
from smollm2_accuracy import config_from  # noqa: F401
sys.path.insert(0, str(Path(__file__).resolve().parent))
from w4_awq import report, setup

OUT = Path(os.environ.get("MCQ_EXPERIMENT_DIR") or tempfile.mkdtemp(prefix="mcq-w4-"))
OUT.mkdir(parents=True, exist_ok=True)
DATA = Path(__file__).resolve().parents[1] / "data"


def orth(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def rotate(model, vo=True):
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    Q = orth(cfg.hidden_size, 1)
    H = orth(d, 2)
    dd = lambda w: w.data.to(torch.float64)
    with torch.no_grad():
        E = dd(model.model.embed_tokens.weight)
        head = dd(model.lm_head.weight) * dd(model.model.norm.weight)[None, :]
        model.lm_head.weight = torch.nn.Parameter((head @ Q).float())
        model.model.embed_tokens.weight = torch.nn.Parameter((E @ Q).float())
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            for norm, lins in ((layer.input_layernorm, (at.q_proj, at.k_proj, at.v_proj)),
                               (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
                g = dd(norm.weight)
                for lin in lins:
                    lin.weight.data = ((dd(lin.weight) * g[None, :]) @ Q).float()
                norm.weight.fill_(1.0)
            for lin in (at.o_proj, mlp.down_proj):
                lin.weight.data = (Q.t() @ dd(lin.weight)).float()
            if vo:
                hb = torch.block_diag(*[H] * kv)
                he = torch.block_diag(*[H] * heads)
                at.v_proj.weight.data = (hb.t() @ dd(at.v_proj.weight)).float()
                at.o_proj.weight.data = (dd(at.o_proj.weight) @ he).float()
    model.config.tie_word_embeddings = False


def main():
    variants = sys.argv[1].split(",")
    texts = sys.argv[2] if len(sys.argv) > 2 else "dev"
    model, tok, ids, base = setup(texts)
    rotate(model)
    after = {k: window_nll(EagerPrefill(model), v) for k, v in ids.items()}
    print("float after rot", {k: math.exp(a / n) for k, (a, n) in after.items()},
          "before", {k: math.exp(a / n) for k, (a, n) in base.items()}, flush=True)
    report(model, tok, variants, ids, base, 'rot')


if __name__ == "__main__":
    main()
