"""SmolLM2-135M-Instruct perplexity on the held-out English text: fp32 vs qlevels 2, 3, 4.

    python benchmarks/smollm2_accuracy.py [--preset W8A8KV8] [--tokens 4096] [--window 512]
    python benchmarks/smollm2_accuracy.py --preset W8A16,W4A16,W4A16+gptq=false --qlevels 0,4 --no-tokens-check

--preset takes a comma-separated list; NAME+key=value+... changes config keys of a preset (values
parsed as YAML). Every config uses the same capture, calibration samples and held-out text. Also
checks that qlevel 3 and qlevel 4 give the same greedy tokens (64 new tokens, 5 prompts).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mcq
from mcq.evaluate import AGREEMENT_PROMPTS, perplexity
from mcq.examples import load_example

HELDOUT = Path(__file__).parent / "data" / "heldout_en.txt"
PROMPTS = AGREEMENT_PROMPTS


def config_from(text: str) -> mcq.QuantConfig:
    """'W4A16+gptq=false+weight_group_size=64' -> the preset with those keys changed."""
    import dataclasses

    import yaml

    name, *changes = text.split("+")
    cfg = mcq.preset(name)
    values = {k: yaml.safe_load(v) for k, v in (c.split("=", 1) for c in changes)}
    return dataclasses.replace(cfg, **values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="W8A8KV8")
    ap.add_argument("--config", default=None, help="YAML config instead of --preset")
    ap.add_argument("--tokens", type=int, default=0, help="evaluate on the first N tokens (0: all)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--qlevels", default="0,2,3,4")
    ap.add_argument("--no-tokens-check", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_example("smollm2")
    ids = tok.backend_tokenizer.encode(HELDOUT.read_text()).ids
    if args.tokens:
        ids = ids[: args.tokens]
    t = time.time()
    captured = mcq.capture_model(model)
    print(f"capture: {time.time() - t:.1f} s")
    configs = {args.config: mcq.QuantConfig.from_yaml(args.config)} if args.config else \
        {name: config_from(name) for name in args.preset.split(",")}
    levels = [int(x) for x in args.qlevels.split(",")]
    rows: list[tuple[str, int, float]] = []
    if 0 in levels:
        fp = mcq.quantize(captured, mcq.preset("FLOAT"), tokenizer=tok, progress=False)
        rows.append(("fp32", 0, perplexity(fp.model(0), ids, args.window, progress=True)))
    for name, cfg in configs.items():
        t = time.time()
        q = mcq.quantize(captured, cfg, tokenizer=tok)
        print(f"quantize ({name}): {time.time() - t:.1f} s; evaluating on {len(ids)} tokens")
        for level in [lv for lv in levels if lv]:
            t = time.time()
            rows.append((name, level, perplexity(q.model(level), ids, args.window, progress=True)))
            print(f"{name} qlevel {level}: perplexity {rows[-1][2]:.4f}  ({time.time() - t:.0f} s)", flush=True)
    base = rows[0][2] if rows and rows[0][1] == 0 else None
    print("| config | qlevel | perplexity | vs fp32 |\n|---|---|---|---|")
    for name, level, p in rows:
        delta = f"{100 * (p / base - 1):+.2f} %" if base else "n/a"
        print(f"| {name} | {level} | {p:.3f} | {delta} |")
    if not args.no_tokens_check:
        m3, m4 = q.model(3), q.model(4)
        ids3 = m3.generate([tok.backend_tokenizer.encode(p).ids for p in PROMPTS], max_new_tokens=64,
                           stop_at_eos=False)
        ids4 = m4.generate([tok.backend_tokenizer.encode(p).ids for p in PROMPTS], max_new_tokens=64,
                           stop_at_eos=False)
        same = sum(a == b for a, b in zip(ids3, ids4))
        print(f"qlevel 3 vs 4 greedy: {same}/{len(PROMPTS)} prompts give identical 64 new tokens")
        for p, a in zip(PROMPTS, ids4):
            print(repr(p + tok.decode(a)))


if __name__ == "__main__":
    main()
