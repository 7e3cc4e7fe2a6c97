"""Speed, load time, size and memory of SmolLM2-135M-Instruct: mcq bundles against the runtimes
users would otherwise pick, all measured in one run.

    PYTHONPATH=. python benchmarks/speed_smollm2.py --workdir /tmp/mcq-speed [--passes 2]

Contenders (each measured in its own subprocess, so load time and peak RSS are its own; the
passes interleave contenders because the machine is noisy; the table keeps each figure's best
pass):
- mcq W8A8KV8, W8A16, W4A16 at qlevel 4: interpreted (`runtime.load(path)`) and compiled
  (`runtime.load(path, compile=True)`; its first-call compile time is reported apart); W8A8KV8 on
  the native engine (`runtime.load(path, engine="native")`, a process without torch);
- Hugging Face transformers fp32 and bf16 (eager, from an fp32 safetensors folder);
- onnxruntime-genai fp32 / int8 / int4 and llama.cpp Q8_0 (`benchmarks/external_contenders.py`),
  when those packages are installed.

Figures: load s (open file to first prefill ready; for mcq also `safetensors.torch.load_file`
of the same file, since a .mcq is a safetensors file), prefill tokens/s at 512 tokens, decode
tokens/s at batch 1 and 8 (128 new tokens, greedy), file size, peak RSS of the measured work
(after the first calls, which may compile: their peak is a column of its own).
mcq workers also check that the compiled path's greedy tokens equal the interpreted qlevel-4
path's. The current figures and the command that gave them: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "benchmarks" / "data" / "heldout_en.txt"
MCQ_PRESETS = ("W8A8KV8", "W8A16", "W4A16")
THREADS = 2  # the machine's cores; every contender gets the same
PREFILL_LEN = 512
EXTERNAL_WORKDIR: Path | None = None  # --external-workdir: where external_contenders caches its models


def make_prompts(tokenize, prefill_len: int) -> dict[str, list]:
    """Token ids every contender gets: 8 different 32-token prompts (decode) and one prompt of
    `prefill_len` tokens, from the held-out text (never calibration text)."""
    ids = tokenize(HELDOUT.read_text())
    return {"short": [ids[i * 32 : (i + 1) * 32] for i in range(8)], "long": ids[1000 : 1000 + prefill_len]}


# -- artifacts (made once, cached in the workdir) -------------------------------------------
def save_fp32_folder(model, tok, folder: Path) -> None:
    """An fp32 safetensors folder of the model (save_pretrained refuses GGUF-loaded models): the
    baseline file size, and what transformers loads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
    tok.save_pretrained(folder)


def prepare(workdir: Path, names: list[str]) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    from mcq.examples import load_example

    model, tok = load_example("smollm2")
    captured = None
    (workdir / "prompts.json").write_text(json.dumps(make_prompts(lambda s: tok(s)["input_ids"], PREFILL_LEN)))
    hf_dir = workdir / "hf-fp32"
    if not (hf_dir / "config.json").exists():
        save_fp32_folder(model, tok, hf_dir)
    for preset in MCQ_PRESETS:
        path = workdir / f"smollm2-{preset}.mcq"
        if any(n.startswith(f"mcq-{preset}-") for n in names):
            if not path.exists():
                import mcq

                if captured is None:
                    captured = mcq.capture_model(model)
                print(f"quantizing {preset} ...", flush=True)
                mcq.quantize(captured, mcq.preset(preset), tokenizer=tok).save(path)
            for mode in ("interp", "compiled", "engine"):
                out[f"mcq-{preset}-{mode}"] = path
    for n in ("hf-fp32", "hf-bf16"):
        out[n] = hf_dir
    try:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import external_contenders as ext  # noqa: PLC0415 - optional contenders

        ext_dir = EXTERNAL_WORKDIR or workdir / "external"
        for precision in ("fp32", "int8", "int4"):
            if f"ortgenai-{precision}" in names:
                try:
                    out[f"ortgenai-{precision}"] = ext.prepare_ort_genai(ext_dir, precision)
                except Exception as e:  # noqa: BLE001 - report and go on without it
                    print(f"ortgenai-{precision}: unavailable ({e})", flush=True)
        if "llamacpp-Q8_0" in names:
            try:
                out["llamacpp-Q8_0"] = ext.prepare_llama_cpp_q8(ext_dir)
            except Exception as e:  # noqa: BLE001
                print(f"llamacpp-Q8_0: unavailable ({e})", flush=True)
    except ImportError as e:
        print(f"external contenders unavailable ({e})", flush=True)
    return {n: p for n, p in out.items() if n in names}


# -- workers (one subprocess per contender and pass) ----------------------------------------
def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries the
    parent's high-water mark across fork and exec, so every worker read the driver's 1141 MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0


def _rss_mib() -> float:
    """Resident memory now (Linux): the baseline of the interpreter and torch, before loading."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0


def _reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: clear_refs 5), so that the peak measured next
    is that of the work that follows (generation), not of compiling before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_model(m, as_ids, new_tokens: int, prompts: dict, baseline: float) -> dict:
    """First calls, prefill @512, decode at batch 1 and 8, RSS: the figures every mcq path shares
    (`as_ids`: token lists to the path's array type)."""
    long_prompt, short = prompts["long"], prompts["short"]
    res: dict = {}
    # first calls compile (compiled path): timed apart, then every shape used below is warm
    first = time.perf_counter()
    # prefills keep the last position's logits only, as generation does (and llama.cpp's and
    # onnxruntime-genai's prompt processing): the vocabulary projection runs on one position
    for batch in (short[:1], short):
        logits, cache = m.prefill(as_ids(batch), all_logits=False)
        tok = logits[:, -1].argmax(-1)
        for _ in range(3):
            step, cache = m.decode(tok, cache)
            tok = step.argmax(-1)
    m.prefill(as_ids([long_prompt]), all_logits=False)
    res["first_calls_s"] = time.perf_counter() - first
    peak_before_warm_calls = _peak_rss_mib()
    reset = _reset_peak_rss()
    res["prefill_tok_s"] = len(long_prompt) / min(
        _timed(lambda: m.prefill(as_ids([long_prompt]), all_logits=False)) for _ in range(2))
    for batch_size in (1, 8):
        logits, cache = m.prefill(as_ids(short[:batch_size]), all_logits=False, reserve=new_tokens)  # as generate does
        tok = logits[:, -1].argmax(-1)
        t = time.perf_counter()
        for _ in range(new_tokens):
            logits, cache = m.decode(tok, cache)
            tok = logits.argmax(-1)
        res[f"decode_b{batch_size}_tok_s"] = batch_size * new_tokens / (time.perf_counter() - t)
        if batch_size == 1:  # KV cache of the batch-1 generation, in its stored dtype
            res["kv_mib"] = sum(x.nbytes for x in cache.tensors) / 2**20
            res["rss_after_b1_generation_mib"] = _rss_mib() - baseline
    # peak of the measured work (prefill 512, decode at batch 1 and 8), after the first calls
    res["peak_rss_mib"] = _peak_rss_mib() if reset else max(_peak_rss_mib(), peak_before_warm_calls)
    res["peak_rss_first_calls_mib"] = peak_before_warm_calls  # includes compiling, if any
    res["peak_rss_over_baseline_mib"] = res["peak_rss_mib"] - baseline
    return res


def worker_mcq(path: Path, compiled: bool, new_tokens: int, prompts: dict) -> dict:
    import torch
    from safetensors.torch import load_file

    import runtime

    torch.set_num_threads(THREADS)
    baseline = _rss_mib()
    t_file = _timed(lambda: load_file(str(path)))
    t = time.perf_counter()
    m = runtime.load(path, compile=compiled, engine="reference")
    load_s = time.perf_counter() - t
    res = {"load_s": load_s, "safetensors_load_file_s": t_file, "file_mib": path.stat().st_size / 2**20}
    res.update(measure_model(m, torch.tensor, new_tokens, prompts, baseline))
    res["weights_mib"] = sum(v.nbytes for v in load_file(str(path)).values()) / 2**20
    if compiled:  # greedy tokens of the fast path against the reference qlevel-4 interpreter
        ref = runtime.load(path, engine="reference")
        short = prompts["short"]
        a = m.generate(short[:2], max_new_tokens=48, stop_at_eos=False)
        b = ref.generate(short[:2], max_new_tokens=48, stop_at_eos=False)
        res["greedy_equal_to_interpreted"] = a == b
    return res


def worker_engine(path: Path, new_tokens: int, prompts: dict) -> dict:
    """The same measurements on the native engine (`runtime.load(path, engine="native")`): numpy
    in and out, no torch in the process (checked); its load includes `import runtime`."""
    import numpy as np

    baseline = _rss_mib()
    t = time.perf_counter()
    import runtime
    from mcq_format import read

    m = runtime.load(path, engine="native")
    load_s = time.perf_counter() - t
    res = {"load_s": load_s, "file_mib": path.stat().st_size / 2**20}
    res.update(measure_model(m, np.array, new_tokens, prompts, baseline))
    bundle = read(path)
    res["weights_mib"] = sum(bundle.tensor(n).nbytes for n in bundle.tensor_names()) / 2**20
    res["torch_imported"] = "torch" in sys.modules
    return res


def worker_hf(path: Path, dtype_name: str, new_tokens: int, prompts: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    load_s = time.perf_counter() - t
    long_prompt, short = torch.tensor([prompts["long"]]), prompts["short"]
    prefill_len = long_prompt.shape[1]
    res = {"load_s": load_s, "file_mib": sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**20}
    with torch.no_grad():
        model(long_prompt, logits_to_keep=1)
        res["prefill_tok_s"] = prefill_len / min(_timed(lambda: model(long_prompt, logits_to_keep=1)) for _ in range(2))
        for batch_size in (1, 8):
            ids = torch.tensor(short[:batch_size])
            out = model(ids, use_cache=True)
            past, tok_ = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(new_tokens):
                out = model(tok_, past_key_values=past, use_cache=True)
                past, tok_ = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            res[f"decode_b{batch_size}_tok_s"] = batch_size * new_tokens / (time.perf_counter() - t)
    res["peak_rss_mib"] = _peak_rss_mib()
    return res


def worker(name: str, path: Path, new_tokens: int, prompts: dict) -> dict:
    if name.startswith("mcq-") and name.endswith("-engine"):
        return worker_engine(path, new_tokens, prompts)
    if name.startswith("mcq-"):
        return worker_mcq(path, name.endswith("-compiled"), new_tokens, prompts)
    if name.startswith("hf-"):
        return worker_hf(path, name.split("-")[1], new_tokens, prompts)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import external_contenders as ext

    kind = "llama_cpp" if name.startswith("llamacpp") else "ort_genai"
    res: dict = {}
    peak = 0.0
    for batch in (1, 8):  # batch copies of the first prompt; each measurement in a fresh process
        r = ext.measure_isolated(kind, path, prompts["short"][0], new_tokens, batch, len(prompts["long"]))
        res.update({k: v for k, v in r.items() if k in ("load_s", "prefill_tok_s")})
        res[f"decode_b{batch}_tok_s"] = r.get("decode_tok_s")
        peak = max(peak, float(r.get("peak_rss_mb") or 0.0))
    res["file_mib"] = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20 \
        if Path(path).is_dir() else Path(path).stat().st_size / 2**20
    res["peak_rss_mib"] = peak / 1.048576  # MB -> MiB
    return res


# -- driver ---------------------------------------------------------------------------------
def run_worker(name: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--artifact", str(path),
           "--new-tokens", str(args.new_tokens), "--prompts", str(args.workdir / "prompts.json")]
    # one OpenMP wait policy for every contender (torch and llama.cpp both run on libgomp):
    # "active" (libgomp's default, spinning) is fastest on an otherwise idle machine, where torch's
    # many small parallel regions per token pay a wake-up each with "passive" (measured: mcq W4A16
    # decode 62 tok/s active, 26 passive, 55 with one thread); "passive" is the safe choice when
    # anything else shares the cores, where spinning threads collapse throughput 10-300x
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": str(THREADS), "OMP_WAIT_POLICY": args.omp_wait_policy}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("RESULT "):])


def best(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    out = dict(ok[0])
    for r in ok[1:]:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lower_is_better = k.endswith("_s") and not k.endswith("tok_s")
                out[k] = min(out[k], v) if lower_is_better or "rss" in k else max(out[k], v)
    out["first_calls_s"] = ok[0].get("first_calls_s")  # the first pass pays any cold compile
    warm = [r["first_calls_s"] for r in ok[1:] if r.get("first_calls_s") is not None]
    out["first_calls_warm_s"] = min(warm) if warm else None  # later passes: Inductor's disk cache warm
    return out


def table(rows: dict[str, dict]) -> str:
    cols = [("load_s", "load s", "{:.2f}"), ("safetensors_load_file_s", "load_file s", "{:.3f}"),
            ("first_calls_s", "first calls s", "{:.1f}"),
            ("first_calls_warm_s", "first calls, cache warm s", "{:.1f}"), ("prefill_tok_s", "prefill tok/s @512", "{:.0f}"),
            ("decode_b1_tok_s", "decode tok/s b1", "{:.1f}"), ("decode_b8_tok_s", "decode tok/s b8", "{:.1f}"),
            ("file_mib", "file MiB", "{:.1f}"), ("peak_rss_first_calls_mib", "peak RSS to first calls MiB", "{:.0f}"),
            ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
            ("peak_rss_over_baseline_mib", "peak RSS - torch baseline MiB", "{:.0f}"),
            ("rss_after_b1_generation_mib", "RSS after b1 generation - baseline MiB", "{:.0f}"),
            ("greedy_equal_to_interpreted", "tokens = qlevel 4", "{}")]
    lines = ["| contender | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |")
            continue
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: dict[str, dict]) -> list[str]:
    def val(name: str, key: str) -> float | None:
        r = rows.get(name) or {}
        return r.get(key) if "error" not in r else None

    out = []
    for ours, theirs, key in (("mcq-W8A8KV8-engine", "llamacpp-Q8_0", "decode_b1_tok_s"),
                              ("mcq-W8A8KV8-engine", "llamacpp-Q8_0", "decode_b8_tok_s"),
                              ("mcq-W8A8KV8-engine", "llamacpp-Q8_0", "prefill_tok_s"),
                              ("mcq-W8A8KV8-engine", "ortgenai-int8", "decode_b1_tok_s"),
                              ("mcq-W8A8KV8-compiled", "llamacpp-Q8_0", "decode_b1_tok_s"),
                              ("mcq-W8A8KV8-compiled", "ortgenai-int8", "decode_b1_tok_s"),
                              ("mcq-W4A16-engine", "ortgenai-int4", "decode_b1_tok_s"),
                              ("mcq-W8A16-engine", "llamacpp-Q8_0", "decode_b1_tok_s"),
                              ("mcq-W4A16-compiled", "ortgenai-int4", "decode_b1_tok_s"),
                              ("mcq-W8A8KV8-compiled", "llamacpp-Q8_0", "prefill_tok_s"),
                              ("mcq-W8A8KV8-interp", "llamacpp-Q8_0", "prefill_tok_s")):
        a, b = val(ours, key), val(theirs, key)
        if a and b:
            out.append(f"- {ours} / {theirs}, {key}: {a / b:.2f}x")
    for name, r in rows.items():
        if name.startswith("mcq-") and "error" not in r and r.get("safetensors_load_file_s"):
            out.append(f"- {name}: load / safetensors load_file = {r['load_s'] / r['safetensors_load_file_s']:.1f}x; "
                       f"peak RSS / weights = {r['peak_rss_mib'] / r['weights_mib']:.2f}x")
    return out


ALL = [f"mcq-{p}-{m}" for p in MCQ_PRESETS for m in ("interp", "compiled", "engine")] + \
      ["hf-fp32", "hf-bf16", "ortgenai-fp32", "ortgenai-int8", "ortgenai-int4", "llamacpp-Q8_0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mcq-speed"))
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--contenders", default=",".join(ALL))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--omp-wait-policy", choices=("active", "passive"), default="passive",
                    help="OMP_WAIT_POLICY of every contender: active on an idle machine, passive when "
                         "other jobs share the cores (default)")
    ap.add_argument("--prompts", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--external-workdir", type=Path, default=None,
                    help="cache of the onnxruntime-genai / llama.cpp models (default WORKDIR/external)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--artifact", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        prompts = json.loads(args.prompts.read_text())
        print("RESULT " + json.dumps(worker(args.worker, args.artifact, args.new_tokens, prompts)))
        return
    global EXTERNAL_WORKDIR
    EXTERNAL_WORKDIR = args.external_workdir
    artifacts = prepare(args.workdir, args.contenders.split(","))
    results: dict[str, list[dict]] = {n: [] for n in artifacts}
    for p in range(args.passes):
        for name, path in artifacts.items():
            r = run_worker(name, path, args)
            results[name].append(r)
            print(f"pass {p + 1} {name}: {json.dumps(r)}", flush=True)
    rows = {n: best(rs) for n, rs in results.items()}
    print(table(rows))
    print("\n".join(ratios(rows)))


if __name__ == "__main__":
    main()
