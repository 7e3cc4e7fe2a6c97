"""The native engine against the reference path on one SmolLM2 bundle (issue 23), one run.

    python benchmarks/engine_smollm2.py --bundle /tmp/kp/native.mcq [--prompts 20 --new 64]
    (no --bundle: quantizes the W8A8KV8 preset into --workdir first, ~3 minutes)

Reports, each contender measured in the same run on this machine:
- cold start: a fresh process runs `import runtime`, `runtime.load`, and generates one token
  (and whether torch got imported);
- decode tok/s at batch 1 (16-token prompt, 128 new tokens) and prefill tok/s at 512 tokens
  (last-position logits, as generation uses it);
- held-out perplexity (benchmarks/data/heldout_en.txt, 512-token windows) on both paths;
- greedy agreement: prompts x new tokens, how many tokens equal the reference's before the first
  difference, and at the first difference the reference's top-2 logit margin (a small margin is
  a near-tie that a float-rounding flip, spec Q.1a / Q.4b, can turn over).
OMP_WAIT_POLICY=passive for every contender (docs/benchmarks.md: shared cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELDOUT = HERE / "data" / "heldout_en.txt"
COLD = ("import sys, time; t = time.perf_counter(); import runtime; "
        "m = runtime.load(sys.argv[1], engine=sys.argv[2]); m.generate([1, 504, 3458, 282], max_new_tokens=1); "
        "print(time.perf_counter() - t, 'torch' in sys.modules)")


def cold_start(bundle: Path, engine: str, repeats: int = 3) -> tuple[float, bool]:
    best, torch_loaded = float("inf"), False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", COLD, str(bundle), engine], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.split()
        best, torch_loaded = min(best, float(out[0])), out[1] == "True"
    return best, torch_loaded


def speed(model, new_tokens: int = 128) -> tuple[float, float]:
    import numpy as np

    prompt = [(i * 37 + 11) % 40000 for i in range(16)]
    long = [(i * 53 + 7) % 40000 for i in range(512)]
    model.prefill(np.array([long[:32]]), all_logits=False)  # first calls
    t = time.perf_counter()
    model.prefill(np.array([long]), all_logits=False)
    prefill = 512 / (time.perf_counter() - t)
    logits, cache = model.prefill(np.array([prompt]), all_logits=False, reserve=new_tokens)
    tok = np.asarray(logits)[:, -1].argmax(-1)
    t = time.perf_counter()
    for _ in range(new_tokens):
        logits, cache = model.decode(tok, cache)
        tok = np.asarray(logits).argmax(-1)
    return prefill, new_tokens / (time.perf_counter() - t)


def agreement(engine, reference, prompts: list[list[int]], new_tokens: int) -> dict:
    import numpy as np
    import torch

    equal_tokens, identical, margins = 0, 0, []
    for p in prompts:
        a = engine.generate(p, max_new_tokens=new_tokens, stop_at_eos=False)
        b = reference.generate(p, max_new_tokens=new_tokens, stop_at_eos=False)
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(b))
        equal_tokens += same
        identical += same == len(b)
        if same < len(b):  # the reference's top-2 margin where the two part
            logits, cache = reference.prefill(torch.tensor([p + b[:same]]), all_logits=False)
            top = torch.topk(logits[0, -1], 2).values
            margins.append(round(float(top[0] - top[1]), 4))
    return {"prompts": len(prompts), "new_tokens": new_tokens, "identical_prompts": identical,
            "tokens_equal_before_first_difference": equal_tokens, "of": len(prompts) * new_tokens,
            "reference_top2_margin_at_first_difference": margins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/engine-bench"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    bundle = args.bundle
    if bundle is None:
        import mcq
        from mcq.examples import load_example

        args.workdir.mkdir(parents=True, exist_ok=True)
        bundle = args.workdir / "smollm2-w8a8kv8.mcq"
        if not bundle.exists():
            model, _ = load_example("smollm2")
            mcq.quantize(model, mcq.preset("W8A8KV8")).save(bundle)

    import runtime
    from mcq.evaluate import perplexity

    results: dict = {"bundle": str(bundle)}
    for engine in ("native", "reference"):
        results[f"cold_start_s_{engine}"], results[f"torch_imported_{engine}"] = cold_start(bundle, engine)
    native, reference = runtime.load(bundle, engine="native"), runtime.load(bundle)
    for name, model in (("native", native), ("reference", reference)):
        results[f"prefill512_tok_s_{name}"], results[f"decode_tok_s_{name}"] = speed(model)
    ids = native.tokenizer.encode(HELDOUT.read_text())
    for name, model in (("native", native), ("reference", reference)):
        results[f"perplexity_{name}"] = perplexity(model, ids)
    results["perplexity_difference_percent"] = 100 * (results["perplexity_native"] / results["perplexity_reference"] - 1)
    text = HELDOUT.read_text().split()
    prompts = [native.tokenizer.encode(" ".join(text[i * 40 : i * 40 + 12])) for i in range(args.prompts)]
    results["agreement"] = agreement(native, reference, prompts, args.new)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
