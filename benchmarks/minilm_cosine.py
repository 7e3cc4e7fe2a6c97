"""all-MiniLM-L6-v2 (real weights): cosine similarity of quantized sentence embeddings to fp32.

    PYTHONPATH=. python benchmarks/minilm_cosine.py [--configs preset,plain,...] [--qlevels 2,3,4]

Evaluation: the 50 sentences of benchmarks/data/minilm_sentences.txt (written for this project).
Calibration: the sentences of the built-in text (mcq/calibration_text.txt), never the evaluation
ones. fp32 reference: the eager Hugging Face BertModel, mean pooling over the attention mask,
L2 normalization (sentence-transformers' recipe for this model).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mcq
from mcq.evaluate import cosines, reference_embeddings
from mcq.examples import load_example

SENTENCES = Path(__file__).parent / "data" / "minilm_sentences.txt"

# W8A8 variants: the preset (SmoothQuant 0.75 + outlier split at 32x) and ablations of it
CONFIGS = {
    "preset": {"preset": "W8A8"},
    "plain": {"preset": "W8A8", "smoothquant": False, "act_outlier_threshold": 0.0},
    "sq0.75": {"preset": "W8A8", "act_outlier_threshold": 0.0},
    "sq0.5": {"preset": "W8A8", "smoothquant_alpha": 0.5, "act_outlier_threshold": 0.0},
    "sq0.9": {"preset": "W8A8", "smoothquant_alpha": 0.9, "act_outlier_threshold": 0.0},
    "sq-auto": {"preset": "W8A8", "smoothquant_alpha": "auto"},
    "outliers": {"preset": "W8A8", "smoothquant": False},
    "outliers8": {"preset": "W8A8", "smoothquant": False, "act_outlier_threshold": 8.0},
    "sq0.75+outliers16": {"preset": "W8A8", "act_outlier_threshold": 16.0},
    "sq0.75+outliers8": {"preset": "W8A8", "act_outlier_threshold": 8.0},
    "sq0.75+outliers4": {"preset": "W8A8", "act_outlier_threshold": 4.0},
}


def sentences() -> list[str]:
    return [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--qlevels", default="2,3,4")
    ap.add_argument("--samples", type=int, default=64, help="calibration sentences")
    args = ap.parse_args()
    model, tok = load_example("minilm")
    texts = sentences()
    reference = reference_embeddings(model, tok, texts)
    t = time.time()
    captured = mcq.capture_model(model)
    print(f"capture: {time.time() - t:.1f} s; {len(texts)} evaluation sentences")
    fp = mcq.quantize(captured, mcq.preset("FLOAT"), tokenizer=tok, progress=False)
    c = cosines(fp.model(0).embed(texts), reference)
    print(f"FLOAT bundle vs eager fp32: mean cosine {c.mean():.6f}, min {c.min():.6f}")
    print("| config | qlevel | mean cosine | min cosine |\n|---|---|---|---|")
    for name in args.configs.split(","):
        cfg = mcq.QuantConfig.from_dict(CONFIGS[name], source=name)
        t = time.time()
        q = mcq.quantize(captured, cfg, tokenizer=tok, max_samples=args.samples, progress=False)
        seconds = time.time() - t
        specs = [e["inputs"].get("x") or {} for e in q.sections["qformat"]["nodes"].values()]
        split = sum(int(q.tensors[x["outliers"]].numel()) for x in specs if x.get("outliers"))
        embedded = {}
        for level in [int(x) for x in args.qlevels.split(",")]:
            embedded[level] = q.model(level).embed(texts)
            c = cosines(embedded[level], reference)
            print(f"| {name} | {level} | {c.mean():.5f} | {c.min():.5f} |", flush=True)
        same = "bit-identical" if 3 in embedded and 4 in embedded and torch.equal(embedded[3], embedded[4]) else "-"
        print(f"  ({name}: quantize {seconds:.1f} s; {split} outlier channels; qlevel 3 vs 4: {same})", flush=True)


if __name__ == "__main__":
    main()
