"""SmolLM2 W8A8KV8 quantized and evaluated on several float kernel paths of one machine (issue 22).

    python benchmarks/smollm2_kernel_paths.py --workdir /tmp/kp [--paths native,aten-default,...]

CPUs differ in which float kernels torch runs (BLAS, vectorized loops: MKL's, oneDNN's, ATen's),
and so in the last bits of every float result. This runs the project's recipe (the slow test's:
`mcq.quantize(smollm2, preset W8A8KV8)` on the built-in calibration text, then held-out perplexity
at qlevel 4 against fp32) once per kernel path, each in a fresh process with the path's
environment, and reports:

- perplexity over fp32 on each path (the spread the issue asks for);
- whether the bundles are byte-identical, and if not how many tensors differ;
- every bundle evaluated again on the native path, which separates a different bundle (decisions
  taken while quantizing) from a different evaluation (float glue at run time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT = HERE / "data" / "heldout_en.txt"

# name -> environment: each moves float results on the development machines (the README of
# spec/conformance lists what each one changed); ATEN_CPU_CAPABILITY picks ATen's vectorized loops,
# MKL_CBWR MKL's GEMM code path, ONEDNN_MAX_CPU_ISA oneDNN's (and its int8 GEMM: without VNNI the
# runtime's exact fallback runs instead)
PATHS = {
    "native": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "all-lowered": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def worker(bundle: Path, evaluate_only: bool) -> dict:
    import torch

    import mcq
    import runtime
    from mcq.evaluate import EagerPrefill, perplexity
    from mcq.examples import load_example

    torch.manual_seed(0)
    model, tok = load_example("smollm2")
    ids = tok.backend_tokenizer.encode(HELDOUT.read_text()).ids
    out: dict = {"tokens": len(ids)}
    if not evaluate_only:
        t = time.time()
        mcq.quantize(model, mcq.preset("W8A8KV8"), tokenizer=tok, progress=False).save(bundle)
        out["quantize_s"] = round(time.time() - t, 1)
        out["fp32"] = perplexity(EagerPrefill(model), ids)
    out["q4"] = perplexity(runtime.load(bundle, qlevel=4, engine="reference"), ids)
    return out


def tensor_digests(path: Path) -> dict[str, str]:
    sys.path.insert(0, str(HERE.parent))
    import mcq_format

    bundle = mcq_format.read(path)
    return {name: hashlib.sha256(bundle.tensor(name).tobytes()).hexdigest() for name in bundle.tensor_names()}


def run(name: str, env: dict[str, str], bundle: Path, evaluate_only: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(bundle)] + (["--evaluate-only"] if evaluate_only else [])
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{name}: worker failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mcq-kernel-paths"))
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--evaluate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.evaluate_only)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    names = args.paths.split(",")
    rows = {}
    for name in names:
        t = time.time()
        rows[name] = run(name, PATHS[name], args.workdir / f"{name}.mcq", False)
        print(f"{name}: {rows[name]} ({time.time() - t:.0f} s)", flush=True)
    first = names[0]
    base = tensor_digests(args.workdir / f"{first}.mcq")
    print(f"\n| kernel path | fp32 | W8A8KV8 q4 | vs fp32 | tensors differing from {first}'s bundle "
          f"| its bundle evaluated on {first} | vs fp32 |\n|---|---|---|---|---|---|---|")
    for name in names:
        r = rows[name]
        digests = tensor_digests(args.workdir / f"{name}.mcq")
        differ = sum(digests[k] != base.get(k) for k in digests)
        cross = rows[first]["q4"] if name == first else run(first, PATHS[first], args.workdir / f"{name}.mcq", True)["q4"]
        fp32 = rows[first]["fp32"]
        print(f"| {name} | {r['fp32']:.4f} | {r['q4']:.4f} | {100 * (r['q4'] / r['fp32'] - 1):+.2f} % "
              f"| {differ} of {len(digests)} | {cross:.4f} | {100 * (cross / fp32 - 1):+.2f} % |", flush=True)


if __name__ == "__main__":
    main()
