"""Full-size GPT-J-6B (random fp32 weights) on a 24 GiB machine: streaming W8A8KV8 quantization and
generation from the bundle, with the time and peak RSS of each phase (issue 6).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/gptj6b_streaming.py [--dir /tmp/gptj6b] [--keep]

Phases, each in its own process so that each peak RSS (ru_maxrss, which counts mapped file pages
too) is its own:

1. write: the real GPT-J-6B config (28 layers, n_embd 4096, 16 heads, rotary_dim 64, vocab 50400,
   n_positions 2048) as fp32 safetensors shards of about 1 GB, generated tensor by tensor with
   fixed seeds (N(0, 0.02) matrices, unit LayerNorm gains, zero biases): ~24 GB, never whole in memory;
2. quantize: `mcq.quantize_streaming` with the W8A8KV8 preset (GPTQ off by default: on 2 cores the
   16384-wide fc_out Hessians alone take hours of float64 Cholesky and 2 GiB each; --gptq turns
   it on) on 4 x 64 seeded random token ids;
3. generate at qlevel 3 and at qlevel 4: 16 greedy tokens from a fixed prompt; both must agree;
4. generate on the native engine (qlevel 4, no torch in the process): the same 16 tokens are
   reported beside the reference's, with each path's load and generation time.

Targets: quantize peak RSS <= 8 GiB, generate peak RSS <= 9 GiB. `--layers N` runs a shallower model
of the same width (a quick check of the script). Files are deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEED = 0
STD = 0.02  # small weights keep the activations of 28 random layers in a sane range
SHARD_BYTES = 1 << 30
PROMPT = [50, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
NEW_TOKENS = 16
QUANTIZE_TARGET_GIB, GENERATE_TARGET_GIB = 8.0, 9.0


def gptj_config(layers: int):
    from transformers import GPTJConfig

    return GPTJConfig(vocab_size=50400, n_embd=4096, n_layer=layers, n_head=16, rotary_dim=64, n_positions=2048,
                      n_inner=None, bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def write_checkpoint(folder: Path, layers: int) -> dict:
    """config.json + ~1 GB fp32 shards + model.safetensors.index.json, one tensor in memory at a time
    per shard being filled (a shard is written as soon as it is full)."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    cfg = gptj_config(layers)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(folder)
    with init_empty_weights():
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    names = sorted(shapes)  # a fixed order: each tensor's seed is its index
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        n = 4 * int(torch.Size(shapes[name]).numel())
        if groups[-1] and size + n > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    weight_map, total = {}, 0
    for s, group in enumerate(groups):
        file = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in group:
            shape = shapes[name]
            if name.endswith(".bias"):
                t = torch.zeros(shape)
            elif ".ln_" in name and name.endswith(".weight"):
                t = torch.ones(shape)
            else:
                gen = torch.Generator().manual_seed(SEED + names.index(name))
                t = torch.randn(shape, generator=gen) * STD
            tensors[name] = t
            weight_map[name] = file
            total += t.numel() * 4
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
        print(f"  wrote {file} ({len(group)} tensors)", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return {"shards": len(groups), "checkpoint_gb": round(total / 1e9, 2)}


def quantize(folder: Path, bundle: Path, gptq: bool) -> dict:
    import torch

    import mcq

    gen = torch.Generator().manual_seed(SEED)
    samples = torch.randint(0, 50400, (4, 64), generator=gen).tolist()
    cfg = mcq.QuantConfig.from_dict({"preset": "W8A8KV8", "gptq": gptq})
    mcq.quantize_streaming(folder, bundle, cfg, samples=samples, batch_size=4)
    return {"bundle_gb": round(bundle.stat().st_size / 1e9, 2), "gptq": gptq}


def generate(bundle: Path, qlevel: int, engine: str = "reference") -> dict:
    import runtime

    start = time.perf_counter()
    model = runtime.load(bundle, qlevel=qlevel, engine=engine)
    loaded = time.perf_counter()
    tokens = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    seconds = time.perf_counter() - loaded
    return {"tokens": [int(t) for t in tokens], "load_s": round(loaded - start, 1), "generate_s": round(seconds, 1),
            "tok_s": round(NEW_TOKENS / seconds, 2), "torch_imported": "torch" in sys.modules}


def run_phase(args: argparse.Namespace) -> None:
    if args.phase != "generate-engine":  # the engine's process never imports torch
        import torch

        torch.set_num_threads(1)
    folder, bundle = Path(args.dir) / "checkpoint", Path(args.dir) / "gptj6b-w8a8kv8.mcq"
    start = time.perf_counter()
    if args.phase == "write":
        extra = write_checkpoint(folder, args.layers)
    elif args.phase == "quantize":
        extra = quantize(folder, bundle, args.gptq)
    elif args.phase == "generate-engine":
        extra = generate(bundle, 4, engine="native")
    else:
        extra = generate(bundle, int(args.phase.removeprefix("generate-q")))
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"phase": args.phase, "seconds": round(seconds, 1),
                                  "peak_rss_gib": round(peak_rss_gib(), 2), **extra}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default="/tmp/gptj6b", help="work folder for the checkpoint and the bundle")
    p.add_argument("--layers", type=int, default=28, help="transformer blocks (28: GPT-J-6B)")
    p.add_argument("--gptq", action="store_true", help="GPTQ rounding (the preset's; hours at 6B on 2 cores)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint and the bundle")
    p.add_argument("--phases", default="write,quantize,generate-q3,generate-q4,generate-engine",
                   help="phases to run, in order (a kept --dir lets later phases run again alone)")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = p.parse_args()
    if args.phase:
        return run_phase(args)
    results = []
    try:
        for phase in args.phases.split(","):
            cmd = [sys.executable, __file__, "--phase", phase, "--dir", args.dir, "--layers", str(args.layers)]
            proc = subprocess.run(cmd + (["--gptq"] if args.gptq else []), stdout=subprocess.PIPE, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"phase {phase} failed (exit {proc.returncode})")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    by = {r["phase"]: r for r in results}
    same = all(by[p]["tokens"] == by["generate-q4"]["tokens"] for p in ("generate-q3",) if p in by and "generate-q4" in by)
    print(f"\nGPT-J-6B config with {args.layers} layers, random fp32 weights; 1 thread per phase\n")
    print("| phase | time (s) | peak RSS (GiB) | target | notes |")
    print("|---|---|---|---|---|")
    targets = {"quantize": QUANTIZE_TARGET_GIB, "generate-q3": GENERATE_TARGET_GIB, "generate-q4": GENERATE_TARGET_GIB,
               "generate-engine": GENERATE_TARGET_GIB}
    for r in results:
        t = targets.get(r["phase"])
        verdict = "" if t is None else f"<= {t:g}: {'met' if r['peak_rss_gib'] <= t else 'NOT met'}"
        notes = {k: v for k, v in r.items() if k not in ("phase", "seconds", "peak_rss_gib", "tokens")}
        if "tokens" in r:
            notes["tokens"] = " ".join(map(str, r["tokens"]))
        print(f"| {r['phase']} | {r['seconds']} | {r['peak_rss_gib']} | {verdict} | "
              f"{', '.join(f'{k}: {v}' for k, v in notes.items())} |")
    if "generate-q3" in by and "generate-q4" in by:
        print(f"\nqlevel 3 and qlevel 4 tokens {'identical' if same else 'DIFFER'}")
    if "generate-engine" in by and "generate-q4" in by:
        a, b = by["generate-engine"]["tokens"], by["generate-q4"]["tokens"]
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        print(f"engine tokens {'identical to' if a == b else f'part from (at token {first})'} the reference qlevel 4's")
    ok = same and all(r["peak_rss_gib"] <= targets[r["phase"]] for r in results if r["phase"] in targets)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
