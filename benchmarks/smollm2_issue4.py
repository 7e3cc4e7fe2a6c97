"""Issue 4's SmolLM2 targets on the current code, one capture, one run: each config quantized on
the same 14 built-in calibration samples, perplexity at qlevel 4 on the 7,553 held-out tokens.

    mcq report --example smollm2 --preset W8A8KV8 --top 10 --json report.json
    PYTHONPATH=. python benchmarks/smollm2_issue4.py --report report.json \
        W8A8KV8,top5,top10,W8A8KV8+smoothquant=false,W8A16,W4A16,W4A16+gptq=false+gptq_sequential=false

A config is a preset with changed keys (`smollm2_accuracy.py`'s NAME+key=value syntax) or `topK`:
the W8A8KV8 preset plus the first K overrides the report suggested (after the preset's own).
`topK+key=value` changes each of those overrides of a linear (`-` drops the key). Session 10's
table (CHANGELOG.md, measurement history, from `mcq report ... --top 64 --json report64.json`):

    ... --report report64.json top20,top40,top5+weight_dtype=float32,top20+weight_dtype=float32,\
        top40+weight_dtype=float32,top20+act_dtype=-+act_calib_method=MSE_SYM,\
        top20+act_dtype=-+act_calib_method=PERCENTILE_ASYM,W8A8KV8+act_calib_method=MSE_SYM
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import mcq
from mcq.evaluate import perplexity
from mcq.examples import load_example

sys.path.insert(0, str(Path(__file__).parent))
from smollm2_accuracy import HELDOUT, config_from  # noqa: E402


def _changed(override: dict, changes: list[str]) -> dict:
    import yaml

    out = dict(override)
    if out.get("kind") == "linear":
        for key, value in (c.split("=", 1) for c in changes):
            if value == "-":
                out.pop(key, None)
            else:
                out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", help="comma-separated: NAME[+key=value...] or topK")
    ap.add_argument("--report", type=Path, default=None, help="`mcq report --json` output (for topK)")
    ap.add_argument("--qlevel", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_example("smollm2")
    ids = tok.backend_tokenizer.encode(HELDOUT.read_text()).ids
    captured = mcq.capture_model(model)
    suggested = json.loads(args.report.read_text())["suggested_overrides"] if args.report else []
    fp = mcq.quantize(captured, mcq.preset("FLOAT"), tokenizer=tok, progress=False)
    base = perplexity(fp.model(0), ids, 512)
    rows = []
    for name in args.configs.split(","):
        if name.startswith("top"):
            if not suggested:
                raise SystemExit(f"{name}: give --report FILE.json (mcq report --json)")
            count, *changes = name[3:].split("+")
            k = int(count)
            cfg = mcq.QuantConfig.from_dict({"preset": "W8A8KV8",
                                             "overrides": [_changed(o, changes) for o in suggested[:k]]})
            name = f"W8A8KV8 + the report's top-{k} overrides" + "".join(f" +{c}" for c in changes)
        else:
            cfg = config_from(name)
        t = time.time()
        q = mcq.quantize(captured, cfg, tokenizer=tok, progress=False)
        rows.append((name, perplexity(q.model(args.qlevel), ids, 512)))
        print(f"{name}: {rows[-1][1]:.4f} ({time.time() - t:.0f} s)", flush=True)
    print(f"| config | qlevel | perplexity | vs fp32 |\n|---|---|---|---|\n| fp32 | 0 | {base:.3f} | +0.00 % |")
    for name, p in rows:
        print(f"| {name} | {args.qlevel} | {p:.3f} | {100 * (p / base - 1):+.2f} % |")


if __name__ == "__main__":
    main()
