"""Experiment: AWQ-style scaling applied to the HF model (exact equivalence), then mcq W4A16."""
import math, sys, time, json, dataclasses
from pathlib import Path
import os
import tempfile

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mcq, runtime
from mcq.examples import load_example
from mcq.data import load_samples
from mcq.evaluate import window_nll, EagerPrefill
from smollm2_accuracy import config_from

OUT = Path(os.environ.get("MCQ_EXPERIMENT_DIR") or tempfile.mkdtemp(prefix="mcq-w4-"))
OUT.mkdir(parents=True, exist_ok=True)
DATA = Path(__file__).resolve().parents[1] / "data"
GRID = [i / 20 for i in range(20)]


def fq(w, g=128, bits=4):
    o, i = w.shape
    pad = (-i) % g
    if pad:
        return torch.cat([fq(w[:, : i - (i % g)], g, bits), fq(w[:, i - (i % g):], i % g, bits)], 1) if i > g else fq(w, i, bits)
    wg = w.reshape(o, i // g, g)
    lo = wg.amin(-1, keepdim=True).clamp(max=0); hi = wg.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).clamp(min=1e-8)
    zp = torch.round(-lo / s)
    q = torch.clamp(torch.round(wg / s) + zp, 0, qmax)
    return ((q - zp) * s).reshape(o, i)


def search(x, ws, expand=None, g=128):
    """x [N, d]; ws list of weights [o, d]; expand: maps reduced scale vector to d."""
    xm = x.abs().mean(0)
    if expand is not None:
        xm_r = expand[1](xm)
    else:
        xm_r = xm
    refs = [x @ w.t() for w in ws]
    best = (None, float("inf"), None)
    errs = []
    for a in GRID:
        s = xm_r.clamp(min=1e-4) ** a
        s = s / (s.max() * s.min()).sqrt()
        sf = expand[0](s) if expand is not None else s
        err = 0.0
        for w, r in zip(ws, refs):
            wq = fq(w * sf, g) / sf
            err += float((x @ wq.t() - r).pow(2).mean())
        errs.append(err)
        if err < best[1]:
            best = (a, err, s)
    return best, errs


def apply_awq(model, samples, g=128, log=None):
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    rep = heads // kv
    acts = {}
    hooks = []
    for li, layer in enumerate(model.model.layers):
        for name, mod in (("qkv", layer.self_attn.q_proj), ("o", layer.self_attn.o_proj),
                          ("gu", layer.mlp.gate_proj), ("down", layer.mlp.down_proj)):
            def hook(m, inp, out, key=(li, name)):
                acts.setdefault(key, []).append(inp[0].detach().reshape(-1, inp[0].shape[-1]).float())
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for s in samples:
            model(input_ids=torch.tensor([s]))
    for h in hooks:
        h.remove()
    chosen = {}
    with torch.no_grad():
        for li, layer in enumerate(model.model.layers):
            at, mlp = layer.self_attn, layer.mlp
            x = torch.cat(acts.pop((li, "qkv")))
            (a, e, s), _ = search(x, [at.q_proj.weight, at.k_proj.weight, at.v_proj.weight], g=g)
            layer.input_layernorm.weight.div_(s)
            for lin in (at.q_proj, at.k_proj, at.v_proj):
                lin.weight.mul_(s)
            chosen[f"{li}.qkv"] = a
            x = torch.cat(acts.pop((li, "gu")))
            (a, e, s), _ = search(x, [mlp.gate_proj.weight, mlp.up_proj.weight], g=g)
            layer.post_attention_layernorm.weight.div_(s)
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight.mul_(s)
            chosen[f"{li}.gu"] = a
            x = torch.cat(acts.pop((li, "down")))
            (a, e, s), _ = search(x, [mlp.down_proj.weight], g=g)
            mlp.up_proj.weight.div_(s[:, None])
            mlp.down_proj.weight.mul_(s)
            chosen[f"{li}.down"] = a
            x = torch.cat(acts.pop((li, "o")))
            # o input channel h*d+j comes from kv head h//rep, row j of v_proj
            expand = (lambda t: t.reshape(kv, 1, d).expand(kv, rep, d).reshape(-1),
                      lambda full: full.reshape(kv, rep, d).mean(1).reshape(-1))
            (a, e, t), _ = search(x, [at.o_proj.weight], expand=expand, g=g)
            at.v_proj.weight.div_(t[:, None])
            at.o_proj.weight.mul_(expand[0](t))
            chosen[f"{li}.o"] = a
    if log:
        print("alphas", chosen, flush=True)
    return chosen


def setup(texts):
    """(SmolLM2, tokenizer, token ids per text, the float model's window NLL per text)."""
    torch.manual_seed(0)
    model, tok = load_example("smollm2")
    model.eval()
    paths = [DATA / "heldout_en.txt"] if texts == "dev" else sorted((DATA / "eval").glob("*.txt"))
    ids = {p.stem: tok(p.read_text(), add_special_tokens=False)["input_ids"] for p in paths}
    return model, tok, ids, {k: window_nll(EagerPrefill(model), v) for k, v in ids.items()}


def report(model, tok, variants, ids, base, tag):
    """Quantize the (transformed) model per variant and print its perplexity against `base`."""
    captured = mcq.capture_model(model)
    for v in variants:
        t = time.time()
        path = OUT / f"{v}-{tag}.mcq"
        mcq.quantize(captured, config_from(v), tokenizer=tok, progress=False).save(path)
        tq = time.time() - t
        m = runtime.load(path)
        per = {k: window_nll(m, x) for k, x in ids.items()}
        pooled = math.exp(sum(a for a, _ in per.values()) / sum(n for _, n in per.values()))
        bpool = math.exp(sum(a for a, _ in base.values()) / sum(n for _, n in base.values()))
        print(f"RESULT {v} {tag} quantize {tq:.0f}s size {path.stat().st_size/1e6:.1f}MB | " +
              " ".join(f"{k} {100*(math.exp(a/n)/math.exp(base[k][0]/base[k][1])-1):+.2f}%" for k, (a, n) in per.items())
              + f" | pooled {100*(pooled/bpool-1):+.2f}%", flush=True)


def main():
    variants = sys.argv[1].split(",")  # e.g. W4A16,W4A16+gptq=false
    awq = sys.argv[2] == "awq"
    texts = sys.argv[3] if len(sys.argv) > 3 else "dev"
    model, tok, ids, base = setup(texts)
    if awq:
        encode = tok.backend_tokenizer.encode
        samples = load_samples(lambda t: encode(t).ids, None, 256, 64)
        t = time.time()
        apply_awq(model, samples, log=True)
        print(f"awq {time.time()-t:.0f}s", flush=True)
        after = {k: window_nll(EagerPrefill(model), v) for k, v in ids.items()}
        print("float after awq", {k: math.exp(a / n) for k, (a, n) in after.items()},
              "before", {k: math.exp(a / n) for k, (a, n) in base.items()}, flush=True)
    report(model, tok, variants, ids, base, 'awq' if awq else 'plain')


if __name__ == "__main__":
    main()
