"""Experiment (not run by CI): what the int8 KV cache and the int8 query of Q.K^T cost SmolLM2 in
float, and what an equivalence transform of the attention operands buys back, before building
it into the toolkit. Fake quantization inside transformers' attention (post-RoPE q, k, v), static
asymmetric min/max ranges from the built-in calibration text (as the W8A8KV8 preset's):

    PYTHONPATH=. python benchmarks/experiments/kv_smoothing_sim.py --texts dev2   # ~10 min, KL and perplexity

Variants: which operands are quantized (q per tensor or per head, k and v per KV head), and
- qk smoothing: k / a and q * a per channel (a the same on each rotate-half pair, so RoPE
  commutes; a = amax_k^alpha / amax_q^(1 - alpha)): Q.K^T unchanged in float,
- v smoothing: v / b per channel, multiplied back after P.V (folded into o_proj's columns).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def fq(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, per_head: bool) -> torch.Tensor:
    """x [batch, heads, seq, head_dim] through the toolkit's int8 MINMAX_ASYM parameters for the
    range [lo, hi] and the runtime's fake quantization: per head (axis 1, as the KV cache) or per
    tensor."""
    from mcq.observers import spec_qparams, spec_to_qp
    from runtime import numerics

    spec = {"dtype": "int8", "nbits": 8, "granularity": "channel" if per_head else "tensor",
            "axis": 1 if per_head else None, "symmetric": False, "method": "MINMAX_ASYM"}
    return numerics.fake_quantize(x, spec_to_qp(spec, *spec_qparams(lo, hi, spec)))


class Sim:
    def __init__(self) -> None:
        self.mode = "float"
        self.stats: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.opts: dict[str, object] = {}
        # the calibration's post-RoPE q and k (14 x 256 tokens), to range the smoothed tensors exactly
        self.raw: dict[tuple[int, str], list[torch.Tensor]] = {}

    def record(self, layer: int, name: str, x: torch.Tensor) -> None:
        # per head and channel: x [b, heads, seq, hd] -> [heads, hd]
        if name in "qk":
            self.raw.setdefault((layer, name), []).append(x.clone())
        lo, hi = x.amin(dim=(0, 2)), x.amax(dim=(0, 2))
        key = (layer, name)
        if key in self.stats:
            a, b = self.stats[key]
            lo, hi = torch.minimum(a, lo), torch.maximum(b, hi)
        self.stats[key] = (lo, hi)

    def smoothing(self, layer: int, groups: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        o = self.opts
        a = b = None
        if o.get("qk_alpha") is not None:
            qlo, qhi = self.stats[(layer, "q")]
            klo, khi = self.stats[(layer, "k")]
            hk, hd = klo.shape
            qa = torch.maximum(qlo.abs(), qhi.abs()).view(hk, groups, hd).amax(1)
            ka = torch.maximum(klo.abs(), khi.abs())
            half = hd // 2
            qa = torch.maximum(qa[:, :half], qa[:, half:]).repeat(1, 2)
            ka = torch.maximum(ka[:, :half], ka[:, half:]).repeat(1, 2)
            alpha = float(o["qk_alpha"])
            a = (ka.clamp(min=1e-5) ** alpha / qa.clamp(min=1e-5) ** (1 - alpha))  # k / a, q * a
        if o.get("v_smooth"):
            vlo, vhi = self.stats[(layer, "v")]
            b = torch.maximum(vlo.abs(), vhi.abs()).clamp(min=1e-5)
        return a, b

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        layer = module.layer_idx
        hq, hk = query.shape[1], key.shape[1]
        groups = hq // hk
        if self.mode == "calib":
            for n, x in (("q", query), ("k", key), ("v", value)):
                self.record(layer, n, x.detach().float())
        elif self.mode == "quant":
            o = self.opts
            a, b = self.smoothing(layer, groups)
            if a is not None:
                key = key / a[None, :, None, :]
                query = query * a.repeat_interleave(groups, 0)[None, :, None, :]
            if b is not None:
                value = value / b[None, :, None, :]
            st = {n: self.stats[(layer, n)] for n in "qkv"}

            def rng(n: str) -> tuple[torch.Tensor, torch.Tensor]:
                lo, hi = st[n]
                if a is not None and n == "k":
                    lo, hi = self._range(self.raw[(layer, "k")], lambda x: x / a[None, :, None, :])
                if a is not None and n == "q":
                    qa = a.repeat_interleave(groups, 0)[None, :, None, :]
                    lo, hi = self._range(self.raw[(layer, "q")], lambda x: x * qa)
                if b is not None and n == "v":
                    lo, hi = lo / b, hi / b
                return lo, hi

            if "k" in o["quant"]:
                lo, hi = rng("k")
                key = fq(key, lo.amin(1), hi.amax(1), True)
            if "v" in o["quant"]:
                lo, hi = rng("v")
                value = fq(value, lo.amin(1), hi.amax(1), True)
            if "q" in o["quant"]:
                lo, hi = rng("q")
                if o.get("q_per_head"):
                    query = fq(query, lo.amin(1), hi.amax(1), True)
                else:
                    query = fq(query, lo.min(), hi.max(), False)
            out, w = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                            scaling=scaling, **kw)
            if b is not None:  # out [b, seq, hq, hd]
                out = out * b.repeat_interleave(groups, 0)[None, None, :, :]
            return out, w
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kw)

    @staticmethod
    def _range(xs: list[torch.Tensor], f) -> tuple[torch.Tensor, torch.Tensor]:
        los = [f(x).amin(dim=(0, 2)) for x in xs]
        his = [f(x).amax(dim=(0, 2)) for x in xs]
        return torch.stack(los).amin(0), torch.stack(his).amax(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", default="dev")
    ap.add_argument("--variants", default="all")
    args = ap.parse_args()
    from heldout_smollm2 import _texts
    from transformers import AttentionInterface

    from mcq.data import load_samples
    from mcq.evaluate import EagerPrefill, window_nll
    from mcq.examples import load_example

    sim = Sim()
    AttentionInterface.register("mcqsim", sim.attention)
    model, tok = load_example("smollm2")
    model.eval()
    model.set_attn_implementation("mcqsim")
    encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    samples = load_samples(encode, None, 256, 64)
    print(f"calibration: {len(samples)} samples", flush=True)

    sim.mode = "calib"
    with torch.no_grad():
        for s in samples:
            model(input_ids=torch.tensor([s]))

    texts = _texts(args.texts)
    ids = {p.stem: encode(p.read_text(encoding="utf-8")) for p in texts}
    variants = {
        "float": None,
        "k": {"quant": "k"},
        "v": {"quant": "v"},
        "q": {"quant": "q"},
        "qk": {"quant": "qk"},
        "qkv (preset)": {"quant": "qkv"},
        "qkv, q per head": {"quant": "qkv", "q_per_head": True},
        "qkv + v smooth": {"quant": "qkv", "v_smooth": True},
        "qkv + qk smooth 0.5": {"quant": "qkv", "qk_alpha": 0.5},
        "qkv + qk smooth 0.5 + v smooth": {"quant": "qkv", "qk_alpha": 0.5, "v_smooth": True},
        "qkv + qk smooth 0.5 + v smooth, q per head": {"quant": "qkv", "qk_alpha": 0.5, "v_smooth": True,
                                                        "q_per_head": True},
        "qkv + qk smooth 0.7 + v smooth": {"quant": "qkv", "qk_alpha": 0.7, "v_smooth": True},
        "qkv + qk smooth 0.3 + v smooth": {"quant": "qkv", "qk_alpha": 0.3, "v_smooth": True},
    }
    if args.variants != "all":
        keep_names = args.variants.split(";")
        variants = {k: v for k, v in variants.items() if k in keep_names or k == "float"}
    windows = [v[i:i + 512] for v in ids.values() for i in range(0, len(v), 512) if len(v[i:i + 512]) >= 2]

    def log_probs() -> list[torch.Tensor]:
        with torch.no_grad():
            return [torch.log_softmax(model(input_ids=torch.tensor([w])).logits[0, :-1].double(), -1)
                    for w in windows]

    base = None
    ref: list[torch.Tensor] = []
    for name, opts in variants.items():
        sim.mode = "float" if opts is None else "quant"
        sim.opts = opts or {}
        per = {k: window_nll(EagerPrefill(model), v, 512) for k, v in ids.items()}
        tot = sum(a for a, _ in per.values()) / sum(n for _, n in per.values())
        lps = log_probs()
        if base is None:
            base, ref = (per, tot), lps
        kl = sum(float((p.exp() * (p - q)).sum()) for p, q in zip(ref, lps, strict=True)) / sum(len(p) for p in ref)
        cells = ", ".join(f"{k} {100 * (math.exp(a / n - base[0][k][0] / base[0][k][1]) - 1):+.2f} %"
                          for k, (a, n) in per.items())
        print(f"{name}: {cells}; pooled {100 * (math.exp(tot - base[1]) - 1):+.2f} %; KL {1e3 * kl:.2f}e-3",
              flush=True)


if __name__ == "__main__":
    main()
