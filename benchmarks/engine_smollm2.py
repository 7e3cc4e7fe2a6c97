"""The native engine against the reference path on one SmolLM2 bundle (issue 23), one run.

    python benchmarks/engine_smollm2.py --bundle /tmp/kp/native.mcq [--prompts 20 --new 64]
    (no --bundle: quantizes the W8A8KV8 preset into --workdir first, ~3 minutes)

Reports, each contender measured in the same run on this machine:
- cold start: a fresh process runs `import runtime`, `runtime.load`, and generates one token
  (and whether torch got imported); with --gguf, llama-cpp-python's the same way (`import
  llama_cpp`, load the GGUF, one token);
- memory: a fresh process that imported numpy (the baseline), then the engine's load and a
  128-token generation from a 32-token prompt: RSS after load, after the generation and its peak
  over the baseline, against the weights' bytes + the KV cache's;
- decode tok/s at batch 1 (16-token prompt, 128 new tokens) and prefill tok/s at 512 tokens
  (last-position logits, as generation uses it);
- held-out perplexity (benchmarks/data/heldout_en.txt, 512-token windows) on both paths;
- greedy agreement: prompts x new tokens, how many tokens equal the reference's before the first
  difference, and at the first difference the reference's top-2 logit margin (a small margin is
  a near-tie that a float-rounding flip, spec Q.1a / Q.4b, can turn over); and teacher-forced on
  the reference's continuation, each position's best token on both paths: a position where they
  differ counts as a tie when the reference's top-2 margin is within the spec's flip tolerance
  for that row of logits (Q.1a: 2^-5 x max |logit|), as a disagreement otherwise.
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
COLD_LLAMA = ("import sys, time; t = time.perf_counter(); import llama_cpp; "
              "m = llama_cpp.Llama(sys.argv[1], n_threads=2, n_ctx=512, verbose=False); "
              "m.eval([1, 504, 3458, 282]); m.sample(); print(time.perf_counter() - t, 'torch' in sys.modules)")
FLIP = 2.0 ** -5  # spec Q.1a: the flip tolerance of a float output, times its max |value|
MEMORY = """
import json, sys
def rss(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024
import numpy as np
base = rss("VmRSS")
import runtime
prompt, new = json.loads(sys.argv[2]), 128
open("/proc/self/clear_refs", "w").write("5")
m = runtime.load(sys.argv[1], engine="native")
loaded, load_peak = rss("VmRSS"), rss("VmHWM")
open("/proc/self/clear_refs", "w").write("5")
m.generate(prompt, max_new_tokens=new, stop_at_eos=False)
print(json.dumps({"baseline_mib": base, "after_load_mib": loaded - base, "after_generation_mib": rss("VmRSS") - base,
                  "peak_mib": rss("VmHWM") - base, "load_peak_mib": load_peak - base,
                  "torch_imported": "torch" in sys.modules}))
"""


def cold_start(bundle: Path, engine: str, repeats: int = 3) -> tuple[float, bool]:
    best, torch_loaded = float("inf"), False
    for _ in range(repeats):
        cmd = [sys.executable, "-c", COLD_LLAMA, str(bundle)] if engine == "llama.cpp" else \
            [sys.executable, "-c", COLD, str(bundle), engine]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
        best, torch_loaded = min(best, float(out[0])), out[1] == "True"
    return best, torch_loaded


def memory(bundle: Path, prompt: list[int], new_tokens: int = 128) -> dict:
    """The engine's resident memory in a fresh process (sizes read here, not in the measured one)."""
    import mcq_format

    with mcq_format.read(bundle) as b:
        weights = sum(b.tensor_info(n).nbytes for n in b.tensor_names()) / 2 ** 20
        kv = b.sections["manifest"]["kv_cache"]
    kv_mib = 2 * kv["layers"] * kv["heads"] * kv["head_dim"] * (len(prompt) + new_tokens) / 2 ** 20  # int8
    out = subprocess.run([sys.executable, "-c", MEMORY, str(bundle), json.dumps(prompt)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    r = {"weights_mib": weights, "kv_mib": kv_mib, **json.loads(out)}
    held = weights + kv_mib
    return {**{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()},
            "ratios_after_load_generation_peak_loadpeak": [round(r[k] / held, 3) for k in (
                "after_load_mib", "after_generation_mib", "peak_mib", "load_peak_mib")]}


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
    forced = teacher_forced(engine, reference, prompts, new_tokens)
    return {"prompts": len(prompts), "new_tokens": new_tokens, "identical_prompts": identical,
            "tokens_equal_before_first_difference": equal_tokens, "of": len(prompts) * new_tokens,
            "reference_top2_margin_at_first_difference": margins, "teacher_forced": forced}


def teacher_forced(engine, reference, prompts: list[list[int]], new_tokens: int) -> dict:
    """Both paths' best token at each position of the reference's own continuation."""
    import numpy as np
    import torch

    equal, ties, beyond, margins, worst = 0, 0, 0, [], 0.0
    for p in prompts:
        seq = p + reference.generate(p, max_new_tokens=new_tokens, stop_at_eos=False)
        a, _ = engine.prefill(np.array([seq]), all_logits=True)
        b, _ = reference.prefill(torch.tensor([seq]), all_logits=True)
        a, b = np.asarray(a[0], dtype=np.float64), b[0].double().numpy()
        for t in range(len(p) - 1, len(seq) - 1):
            worst = max(worst, float(np.abs(a[t] - b[t]).max()))
            if a[t].argmax() == b[t].argmax():
                equal += 1
                continue
            top = np.sort(b[t])[-2:]
            margin, tolerance = float(top[1] - top[0]), FLIP * float(np.abs(b[t]).max())
            margins.append(round(margin, 3))
            if margin <= tolerance:
                ties += 1
            else:
                beyond += 1
    return {"positions": len(prompts) * new_tokens, "equal": equal, "ties_within_flip_tolerance": ties,
            "differ_beyond_tolerance": beyond, "reference_top2_margins_where_different": margins,
            "max_abs_logit_difference": round(worst, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/engine-bench"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--gguf", type=Path, help="llama.cpp's Q8_0 GGUF of the model: its cold start in the same run")
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
    if args.gguf is not None:
        results["cold_start_s_llama.cpp"], _ = cold_start(args.gguf, "llama.cpp")
        results["cold_start_native_over_llama.cpp"] = round(results["cold_start_s_native"] /
                                                             results["cold_start_s_llama.cpp"], 2)
    native, reference = runtime.load(bundle, engine="native"), runtime.load(bundle, engine="reference")
    results["memory_native"] = memory(bundle, native.tokenizer.encode(" ".join(HELDOUT.read_text().split()[:40]))[:32])
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
