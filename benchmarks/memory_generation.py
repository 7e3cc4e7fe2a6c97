"""Resident memory of a 128-token generation from a `.mcq` (issue 5: peak RSS <= 1.3x the weight
bytes + KV cache), each bundle in a fresh process.

    PYTHONPATH=. python benchmarks/memory_generation.py BUNDLE.mcq [BUNDLE.mcq ...] [--compile]

Per bundle: import torch and the runtime (the baseline: what any torch process holds), load,
generate 128 new tokens at batch 1 from a 32-token prompt of the held-out text (greedy, EOS
ignored; token ids in, so the tokenizer is not parsed: its cost is the last column, measured
after). Reported over the baseline: RSS after load, peak RSS during the generation (VmHWM
restarted at its start: Linux clear_refs), RSS after it. "weights" = the bytes of every tensor in
the file (what a model that touches all its weights keeps resident), "KV" = the cache's buffers
as allocated (preallocated for prompt + new tokens, in the KV dtype).

Second baseline ("warmed"): the same process after it also loaded and ran a 2-layer random model
quantized with the bundle's own config (`llama-tiny`, built here once per config), then dropped
it. That pages in the code of the kernels the runtime calls (~17 MiB of libtorch / oneDNN pages,
shared with every torch process, whatever the model): what is left over it is the model's own
memory. Both ratios are printed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HELDOUT = Path(__file__).parent / "data" / "heldout_en.txt"
NEW_TOKENS = 128


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024.0


def prompt_ids(path: str) -> list[int]:
    """The prompt, tokenized here in the driver: the worker's figures leave out the tokenizer
    (serving code often tokenizes elsewhere); its own cost is measured apart (`tokenizer_mib`)."""
    import runtime

    return runtime.load(path, engine="reference").tokenizer.encode(HELDOUT.read_text()[:4000])[:32]


def warm_up_bundle(path: str, folder: Path) -> Path:
    """A 2-layer random Llama quantized with `path`'s recorded config (the same kernels run)."""
    import hashlib

    import mcq
    import runtime
    from mcq.config import QuantConfig
    from mcq.examples import load_example

    config = dict(runtime.load(path, engine="reference").manifest["quant"])
    config.pop("search", None)  # an automatic search's record: the tiny model uses its overrides as given
    out = folder / f"warm-{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]}.mcq"
    if not out.exists():
        mcq.quantize(load_example("llama-tiny")[0], QuantConfig.from_dict(config), progress=False).save(out)
    return out


def worker(path: str, compile: bool, ids: list[int], warm: str) -> dict:
    import gc

    import torch

    import runtime
    from runtime.memory import release_free_heap

    torch.set_num_threads(2)
    baseline = _status("VmRSS")
    tiny = runtime.load(warm, engine="reference")  # interpreted even with --compile: the compiler's memory stays counted
    tiny.generate(list(range(1, 9)), max_new_tokens=8, stop_at_eos=False)  # ids within its vocabulary
    del tiny
    gc.collect()
    release_free_heap()
    warmed = _status("VmRSS")
    model = runtime.load(path, compile=compile, engine="reference")
    after_load = _status("VmRSS") - baseline
    if compile:  # compile every pattern first: the figure is the generation's, not the compiler's
        model.generate(ids, max_new_tokens=4, stop_at_eos=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts from the current RSS
    logits, cache = model.prefill(torch.tensor([ids]), all_logits=False, reserve=NEW_TOKENS)
    tok = logits[:, -1].argmax(-1)
    for _ in range(NEW_TOKENS - 1):  # what generate does, keeping the cache to measure it
        logits, cache = model.decode(tok, cache)
        tok = logits.argmax(-1)
    peak = _status("VmHWM") - baseline
    after = _status("VmRSS") - baseline
    kv = sum(b.nbytes for b in cache._store.buffers) / 2**20
    before = _status("VmRSS")
    model.tokenizer.encode("parsed at first use")
    tokenizer = _status("VmRSS") - before
    bundle = model.bundle
    weights = sum(bundle.tensor(n).nbytes for n in bundle.tensor_names()) / 2**20
    warm_peak = peak - (warmed - baseline)
    return {"bundle": Path(path).name, "compiled": compile, "load_mib": after_load, "peak_mib": peak,
            "after_mib": after, "weights_mib": weights, "kv_mib": kv, "ratio": peak / (weights + kv),
            "warm_mib": warmed - baseline, "warm_peak_mib": warm_peak, "warm_ratio": warm_peak / (weights + kv),
            "tokenizer_mib": tokenizer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--compile", action="store_true", help="runtime.load(compile=True)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the prompt ids, as JSON
    args = ap.parse_args()
    if args.worker:
        ids, warm = json.loads(args.worker)
        print(json.dumps(worker(args.bundles[0], args.compile, ids, warm)))
        return
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="mcq-memory-"))
    for path in args.bundles:
        work = json.dumps([prompt_ids(path), str(warm_up_bundle(path, folder))])
        cmd = [sys.executable, __file__, path, "--worker", work] + (["--compile"] if args.compile else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| bundle | path | RSS after load | peak RSS during generation | RSS after | weights | KV cache "
          "| peak / (weights + KV) | warm-up pages | peak over the warmed baseline | its ratio "
          "| tokenizer, parsed after |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bundle']} | {'compiled' if r['compiled'] else 'interpreted'} | {r['load_mib']:.1f} MiB "
              f"| {r['peak_mib']:.1f} MiB | {r['after_mib']:.1f} MiB | {r['weights_mib']:.1f} MiB "
              f"| {r['kv_mib']:.2f} MiB | {r['ratio']:.2f}x | {r['warm_mib']:.1f} MiB | {r['warm_peak_mib']:.1f} MiB "
              f"| {r['warm_ratio']:.2f}x | +{r['tokenizer_mib']:.1f} MiB |")
    print("(RSS figures over the process's baseline after importing torch and the runtime; \"warmed\": "
          "after a tiny model of the same config also ran and was dropped)")


if __name__ == "__main__":
    main()
