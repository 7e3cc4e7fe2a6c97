"""Experiment (not run by CI): mean KL(float || bundle) of SmolLM2's next-token distributions
over the same 512-token windows as heldout_smollm2.py, per text and pooled, beside the perplexity
change. Perplexity differences of a few tenths of a percent move with any small perturbation of
a bundle (a KV scale 1 % wider moved the development text by +0.5 points); the KL divergence is
a sum of non-negative per-token terms and steadier.

    PYTHONPATH=. python benchmarks/experiments/w8_kl.py --texts devs A.mcq B.mcq ...
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--texts", default="devs")
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    from heldout_smollm2 import _texts

    import runtime
    from mcq.examples import load_example

    model, tok = load_example("smollm2")
    model.eval()
    ids = {p.stem: tok(p.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
           for p in _texts(args.texts)}
    windows = {k: [v[i:i + args.window] for i in range(0, len(v), args.window) if len(v[i:i + args.window]) >= 2]
               for k, v in ids.items()}
    ref: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for k, ws in windows.items():
            ref[k] = [torch.log_softmax(model(input_ids=torch.tensor([w])).logits[0, :-1].double(), -1) for w in ws]
    for path in args.bundles:
        m = runtime.load(path)
        cells, kl_all, d_all, n_all = [], 0.0, 0.0, 0
        for k, ws in windows.items():
            kl = dnll = 0.0
            n = 0
            for w, lp in zip(ws, ref[k], strict=True):
                logits = torch.as_tensor(m.prefill(torch.tensor([w]))[0])[0, :-1].double()
                lq = torch.log_softmax(logits, -1)
                kl += float((lp.exp() * (lp - lq)).sum())
                tgt = torch.tensor(w[1:])[:, None]
                dnll += float((lp.gather(1, tgt) - lq.gather(1, tgt)).sum())
                n += len(w) - 1
            cells.append(f"{k} KL {1e3 * kl / n:.2f}e-3 ppl {100 * (math.exp(dnll / n) - 1):+.2f} %")
            kl_all += kl
            d_all += dnll
            n_all += n
        pooled = f"pooled KL {1e3 * kl_all / n_all:.2f}e-3 ppl {100 * (math.exp(d_all / n_all) - 1):+.2f} %"
        print(f"{path.name}: " + "; ".join(cells) + f"; {pooled}", flush=True)
        del m


if __name__ == "__main__":
    main()
