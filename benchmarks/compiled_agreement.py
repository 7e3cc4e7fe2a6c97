"""Compiled vs interpreted runtime on one bundle: logits on the held-out text (teacher-forced,
512-token windows) and greedy tokens on the agreement prompts, step by step until they part.

    PYTHONPATH=. python benchmarks/compiled_agreement.py BUNDLE.mcq [NEW_TOKENS] [--inexact]

--inexact lets Inductor fuse reductions and functions its own way (`runtime.compiled.
EXACT_FLOAT_GLUE = False`, the compiled path before session 7), to show what exactness buys.

Prints one JSON line for the held-out text (perplexity of both paths, largest logit difference
per position: median / p99 / p99.9 / max, fraction of positions with equal logits), then one per
prompt (where the paths part, the reference's top-2 margin there). Compiles prefill (all logits
and last position) and decode at batch 1: a few minutes cold.
"""
import json
import sys
import time
from pathlib import Path

import torch

import runtime
from runtime import compiled
from mcq.evaluate import AGREEMENT_PROMPTS, perplexity

args = [a for a in sys.argv[1:] if a != "--inexact"]
compiled.EXACT_FLOAT_GLUE = "--inexact" not in sys.argv
path, new_tokens = args[0], int(args[1]) if len(args) > 1 else 32
ref = runtime.load(path, engine="reference")
fast = runtime.load(path, compile=True, engine="reference")
text = (Path(__file__).parent / "data" / "heldout_en.txt").read_text()
ids = ref.tokenizer.encode(text)


class Recorded:
    """A model whose prefill logits are kept (perplexity's windows, in order)."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def prefill(self, x):
        logits, cache = self.model.prefill(x)
        self.logits.append(logits[0])
        return logits, cache


class ComparedTo:
    """A model whose prefill logits are compared, window by window, with recorded ones."""

    def __init__(self, model, recorded):
        self.model, self.expected, self.diffs = model, iter(recorded.logits), []

    def prefill(self, x):
        logits, cache = self.model.prefill(x)
        self.diffs.append((logits[0].double() - next(self.expected).double()).abs().amax(-1))
        return logits, cache


t0 = time.time()
recorded = Recorded(ref)
ppl_ref = perplexity(recorded, ids)
compared = ComparedTo(fast, recorded)
ppl_fast = perplexity(compared, ids)
d = torch.cat(compared.diffs)
res = {"tokens": sum(len(l) - 1 for l in recorded.logits), "ppl_ref": ppl_ref, "ppl_fast": ppl_fast,
       "logit_diff_max": float(d.max()), "p99": float(d.quantile(0.99)), "p999": float(d.quantile(0.999)),
       "median": float(d.median()), "frac_positions_equal": float((d == 0).double().mean()),
       "teacher_forced_s": time.time() - t0}
del recorded, compared
print(json.dumps(res), flush=True)
# greedy partings: step by step on both, same prefix until they part
parts = []
for p in AGREEMENT_PROMPTS:
    pids = ref.tokenizer.encode(p)
    toks = []
    lr, cr = ref.prefill(torch.tensor([pids]), all_logits=False, reserve=new_tokens)
    lf, cf = fast.prefill(torch.tensor([pids]), all_logits=False, reserve=new_tokens)
    lr, lf = lr[:, -1], lf[:, -1]
    info = {"prompt": p, "parted_at": None}
    for step in range(new_tokens):
        tr, tf = int(lr[0].argmax()), int(lf[0].argmax())
        top2 = lr[0].double().topk(2).values
        if tr != tf:
            info.update(parted_at=step, ref_margin=float(top2[0] - top2[1]),
                        max_logit_diff=float((lr[0].double() - lf[0].double()).abs().max()),
                        diff_on_the_two=float(abs((lr[0, tr] - lr[0, tf]) - (lf[0, tr] - lf[0, tf]))))
            break
        toks.append(tr)
        lr, cr = ref.decode(torch.tensor([tr]), cr)
        lf, cf = fast.decode(torch.tensor([tf]), cf)
    info["text"] = ref.tokenizer.decode(toks)
    parts.append(info)
    print(json.dumps(info), flush=True)
print("identical", sum(p["parted_at"] is None for p in parts), "of", len(parts))
