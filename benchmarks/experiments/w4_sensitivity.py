"""W4A16 sensitivity: the preset with one class of matrices at int8 (or lm_head at int4), on the
development text (CHANGELOG.md, measurement history, issue 25). Bundles go to $MCQ_EXPERIMENT_DIR or a temp folder."""
import math, sys, time, dataclasses
from pathlib import Path
import os
import tempfile

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mcq, runtime
from mcq.config import Override
from mcq.examples import load_example
from mcq.evaluate import window_nll, EagerPrefill
OUT = Path(os.environ.get("MCQ_EXPERIMENT_DIR") or tempfile.mkdtemp(prefix="mcq-w4-"))
OUT.mkdir(parents=True, exist_ok=True)
DATA = Path(__file__).resolve().parents[1] / "data"
I8 = (("weight_dtype", "int8"), ("weight_granularity", "channel"), ("weight_calib_method", "AMAX_SYM"))
base_cfg = mcq.preset("W4A16")
VARIANTS = {
  "head-int4": dataclasses.replace(base_cfg, overrides=()),
  "down-int8": dataclasses.replace(base_cfg, overrides=base_cfg.overrides + (Override("*.mlp.down_proj/*", "linear", I8),)),
  "attn-int8": dataclasses.replace(base_cfg, overrides=base_cfg.overrides + (Override("*.self_attn.*/*", "linear", I8),)),
  "gu-int8": dataclasses.replace(base_cfg, overrides=base_cfg.overrides + (Override("*.mlp.gate_proj/*", "linear", I8),Override("*.mlp.up_proj/*", "linear", I8))),
}
names = sys.argv[1].split(",")
model, tok = load_example("smollm2"); model.eval()
paths = [DATA / "heldout_en.txt"]
ids = {p.stem: tok(p.read_text(), add_special_tokens=False)["input_ids"] for p in paths}
base = {k: window_nll(EagerPrefill(model), v) for k, v in ids.items()}
captured = mcq.capture_model(model)
for v in names:
    t = time.time(); path = Path(OUT / f"sens-{v}.mcq")
    mcq.quantize(captured, VARIANTS[v], tokenizer=tok, progress=False).save(path)
    m = runtime.load(path)
    per = {k: window_nll(m, x) for k, x in ids.items()}
    print(f"RESULT {v} {time.time()-t:.0f}s size {path.stat().st_size/538.06e6:.4f}x | " + " ".join(
        f"{k} {100*(math.exp(a/n)/math.exp(base[k][0]/base[k][1])-1):+.2f}%" for k, (a, n) in per.items()), flush=True)
