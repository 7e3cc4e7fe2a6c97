"""SmolLM2-135M-Instruct perplexity on the held-out evaluation set, per text and pooled: mcq
bundles at qlevel 4 (native engine and/or reference path) beside llama.cpp Q8_0 (through
llama-cpp-python) on the same tokens and the same 512-token windows.

    python benchmarks/heldout_smollm2.py --workdir /tmp/mcq-eval --external-workdir /tmp/ext \\
        --presets W8A16,W4A16,W8A8KV8 [--paths engine,reference] [--texts eval]

The evaluation set (`--texts eval`, benchmarks/data/eval/) is three texts written for it and
never used for calibration or for choosing settings: narrative fiction, a technical article,
dialogue and how-to instructions (about 5.7k tokens each). `--texts dev` is the older held-out
file (benchmarks/data/heldout_en.txt), where settings are tried before the eval set sees them;
`--texts dev2` a second development text (dialogue and how-to steps, an expository part, a
story; written in session 20 because the first one hardly sees the int8 KV cache's loss), `--texts
devs` both; `--texts a.txt,b.txt` any files. --presets takes NAME+key=value+... as smollm2_accuracy.py does
(e.g. W8A16+weight_granularity=group+weight_group_size=64) or a YAML config file; bundles are
cached in --workdir by that name (--requantize rebuilds them). Pooled: exp(sum of NLL / tokens scored) over all texts.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE / "data"
TEXT_SETS = {"eval": sorted((DATA / "eval").glob("*.txt")), "dev": [DATA / "heldout_en.txt"],
             "dev2": [DATA / "dev2.txt"], "devs": [DATA / "heldout_en.txt", DATA / "dev2.txt"]}


class LlamaCppPrefill:
    """llama.cpp behind the runtime's prefill signature (window_nll scores it like the bundles):
    each call from an empty cache, every position's logits."""

    def __init__(self, gguf: Path, window: int, threads: int) -> None:
        from external_contenders import _LlamaRunner, _llama_cpp

        self.run = _LlamaRunner(_llama_cpp(), gguf, 1, window + 1, window, threads)

    def prefill(self, x: torch.Tensor) -> tuple[Any, None]:
        ids = x[0].tolist()
        self.run.clear()
        self.run.fill([(t, pos, 0, True) for pos, t in enumerate(ids)])
        self.run.decode()
        return self.run.logits(len(ids))[None].copy(), None


def _texts(spec: str) -> list[Path]:
    paths = TEXT_SETS.get(spec) or [Path(p) for p in spec.split(",")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise SystemExit(f"--texts {spec}: no such file(s): {', '.join(missing) or '(none)'}")
    return paths


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="bundles are cached here")
    ap.add_argument("--external-workdir", type=Path, default=None,
                    help="external_contenders.py's folder: adds llama.cpp Q8_0 (converted there once)")
    ap.add_argument("--presets", default="W8A16,W4A16,W8A8KV8")
    ap.add_argument("--paths", default="engine", help="engine, reference or both (comma-separated)")
    ap.add_argument("--texts", default="eval", help="eval, dev, dev2, devs (dev and dev2), or comma-separated files")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--requantize", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    import mcq
    import runtime
    from mcq.evaluate import EagerPrefill, window_nll
    from mcq.examples import load_example
    from smollm2_accuracy import config_from

    torch.manual_seed(0)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model, tok = load_example("smollm2")
    texts = _texts(args.texts)
    ids = {p.stem: tok(p.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"] for p in texts}
    print("texts: " + ", ".join(f"{k} {len(v)} tokens" for k, v in ids.items()), flush=True)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())  # tied tables counted once
    rows: list[dict[str, Any]] = []

    def measure(name: str, m: Any, size: float | None = None) -> None:
        t = time.time()
        per = {k: window_nll(m, v, args.window) for k, v in ids.items()}
        rows.append({"name": name, "per_text": per, "size": size})
        print(f"{name}: " + ", ".join(f"{k} {math.exp(a / n):.3f}" for k, (a, n) in per.items())
              + f"  ({time.time() - t:.0f} s)", flush=True)

    measure("fp32 (transformers)", EagerPrefill(model.eval()), 1.0)
    if args.external_workdir is not None:
        from external_contenders import LLAMA_THREADS, prepare_llama_cpp_q8

        gguf = prepare_llama_cpp_q8(args.external_workdir)
        llama = LlamaCppPrefill(gguf, args.window, LLAMA_THREADS)
        measure("llama.cpp Q8_0", llama, gguf.stat().st_size / fp32_bytes)
        llama.run.close()
    captured = None
    for spec in args.presets.split(","):
        is_file = spec.endswith((".yaml", ".yml"))
        path = args.workdir / f"smollm2-{_slug(Path(spec).stem if is_file else spec)}.mcq"
        if args.requantize or not path.exists():
            if captured is None:
                captured = mcq.capture_model(model)
            t = time.time()
            config = mcq.QuantConfig.from_yaml(spec) if is_file else config_from(spec)
            mcq.quantize(captured, config, tokenizer=tok).save(path)
            print(f"quantize {spec}: {time.time() - t:.0f} s -> {path}", flush=True)
        for engine in args.paths.split(","):
            m = runtime.load(path, qlevel=4, engine={"engine": "native"}.get(engine, engine))
            measure(f"mcq {spec} ({engine})", m, path.stat().st_size / fp32_bytes)
            del m

    base = rows[0]["per_text"]
    names = list(ids)
    print(f"\n| contender | {' | '.join(names)} | pooled | size / fp32 |")
    print("|---|" + "---|" * (len(names) + 2))
    for r in rows:
        cells = []
        for k in names:
            a, n = r["per_text"][k]
            ppl, ref = math.exp(a / n), math.exp(base[k][0] / base[k][1])
            cells.append(f"{ppl:.3f} ({100 * (ppl / ref - 1):+.2f} %)")
        pooled = math.exp(sum(a for a, _ in r["per_text"].values()) / sum(n for _, n in r["per_text"].values()))
        ref = math.exp(sum(a for a, _ in base.values()) / sum(n for _, n in base.values()))
        r["pooled"] = pooled
        size = f"{r['size']:.3f}x" if r["size"] else ""
        print(f"| {r['name']} | {' | '.join(cells)} | {pooled:.3f} ({100 * (pooled / ref - 1):+.2f} %) | {size} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
