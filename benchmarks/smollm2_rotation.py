"""Feasibility check for W8A8KV8: SmolLM2 with its residual stream rotated before capture.

    python benchmarks/smollm2_rotation.py W8A8KV8 W8A8KV8+act_outlier_threshold=0 [--down]
    python benchmarks/smollm2_rotation.py --no-residual --online down_proj W8A8KV8 W8A8KV8+gptq=false

The RMSNorm weights are folded into the linears that read them, then a seeded random orthogonal
Q (576 x 576) rotates the residual stream: embeddings E Q, readers W Q, writers Q^T W, an untied
lm_head (final norm folded in). The float model is unchanged (perplexity equal to fp32's).
--down also rotates the down_proj inputs by a random orthogonal R (1536 x 1536): a float linear
before each down_proj (kept float by an override) and down_proj's weight W R. --online KINDS
rotates the inputs of those linears (e.g. down_proj), leaving out the channels mcq's outlier
split takes (session 8: what became `act_rotation`); --no-residual leaves the residual stream. Each argument is a
preset with +key=value changes; prints the held-out perplexity at qlevel 2. Not part of mcq:
QuaRot-style rotation is measured here before anyone builds it into capture.
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch
import yaml

import mcq
from mcq.evaluate import perplexity
from mcq.examples import load_example

HELDOUT = Path(__file__).parent / "data" / "heldout_en.txt"
torch.manual_seed(0)
model, tok = load_example("smollm2")
ids = tok.backend_tokenizer.encode(HELDOUT.read_text()).ids
m = model.model
d = model.config.hidden_size
g = torch.Generator().manual_seed(0)
Q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
Q = Q * torch.sign(torch.diagonal(r))
RESIDUAL = "--no-residual" not in sys.argv
sys.argv = [a for a in sys.argv if a != "--no-residual"]
with torch.no_grad():
  if RESIDUAL:
      E = m.embed_tokens.weight.double()
      lm = model.lm_head.weight.double().clone()
      model.lm_head.weight = torch.nn.Parameter(((lm * m.norm.weight.double()[None]) @ Q).float())
      m.embed_tokens.weight = torch.nn.Parameter((E @ Q).float())
      m.norm.weight.fill_(1.0)
      model.config.tie_word_embeddings = False
      for layer in m.layers:
          a, f = layer.self_attn, layer.mlp
          for lin, norm in ((a.q_proj, layer.input_layernorm), (a.k_proj, layer.input_layernorm), (a.v_proj, layer.input_layernorm),
                            (f.gate_proj, layer.post_attention_layernorm), (f.up_proj, layer.post_attention_layernorm)):
              lin.weight.copy_(((lin.weight.double() * norm.weight.double()[None]) @ Q).float())
          layer.input_layernorm.weight.fill_(1.0); layer.post_attention_layernorm.weight.fill_(1.0)
          for lin in (a.o_proj, f.down_proj):
              lin.weight.copy_((Q.t() @ lin.weight.double()).float())
              assert lin.bias is None
class Rot(torch.nn.Module):
    def __init__(s, Rt):
        super().__init__(); s.weight = torch.nn.Parameter(Rt, requires_grad=False)
    def forward(s, x):
        return torch.nn.functional.linear(x, s.weight)
def orthogonal(n):
    R, r2 = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return R * torch.sign(torch.diagonal(r2))
def input_outliers(linears, threshold=32.0):
    """Per linear, the input channels whose abs-max on the calibration text exceeds threshold x
    the median channel's (at most 1 %), as mcq's outlier split picks them."""
    amax = {}
    def hook(mod, args, key):
        a = args[0].detach().abs().amax(dim=(0, 1))
        amax[key] = torch.maximum(amax[key], a) if key in amax else a
    hooks = [lin.register_forward_pre_hook(lambda mod, args, key=key: hook(mod, args, key))
             for key, lin in linears.items()]
    text = (Path(mcq.__file__).parent / "calibration_text.txt").read_text()
    cal = tok.backend_tokenizer.encode(text).ids
    with torch.no_grad():
        for s in range(0, len(cal), 256):
            model(torch.tensor([cal[s:s + 256]]))
    for h in hooks:
        h.remove()
    out = {}
    for key, a in amax.items():
        idx = torch.nonzero(a > threshold * a.median()).flatten()
        out[key] = idx[a[idx].argsort(descending=True)][: max(1, a.numel() // 100)]
    return out
# --down: rotate the down_proj inputs whole; --online KINDS (e.g. down_proj or q_proj,...,down_proj):
# rotate the inputs of those linears by a float linear in front of each, random orthogonal on the
# channels the outlier split leaves (outlier channels pass unchanged)
ONLINE, FULL = set(), False
if "--down" in sys.argv:
    ONLINE, FULL = {"down_proj"}, True
    sys.argv.remove("--down")
if "--online" in sys.argv:
    i = sys.argv.index("--online")
    ONLINE = set(sys.argv[i + 1].split(","))
    del sys.argv[i:i + 2]
DOWN = bool(ONLINE)
if ONLINE:
    targets = {}
    for li, layer in enumerate(m.layers):
        for parent in (layer.self_attn, layer.mlp):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                if name in ONLINE and hasattr(parent, name):
                    targets[(li, name)] = (parent, name)
    keep = {} if FULL else input_outliers({k: getattr(p, n) for k, (p, n) in targets.items()})
    print("outlier channels kept out of the rotations:", sum(len(v) for v in keep.values()), flush=True)
    R_full = orthogonal(model.config.intermediate_size) if FULL else None
    with torch.no_grad():
        for key, (parent, name) in targets.items():
            lin = getattr(parent, name)
            n = lin.weight.shape[1]
            if FULL:
                R = R_full
            else:
                k = keep.get(key, torch.zeros(0, dtype=torch.long))
                rest = torch.tensor([c for c in range(n) if c not in set(k.tolist())])
                R = torch.zeros(n, n, dtype=torch.float64)
                R[k, k] = 1.0
                R[rest[:, None], rest[None, :]] = orthogonal(len(rest))
            lin.weight.copy_((lin.weight.double() @ R).float())  # (u R) (W R)^T = u W^T
            setattr(parent, name, torch.nn.Sequential(Rot(R.t().contiguous().float()), lin))
captured = mcq.capture_model(model)
for spec in ["FLOAT"] + sys.argv[1:]:
    name, *kv = spec.split("+")
    keys = {"preset": name, **{k: yaml.safe_load(v) for k, v in (c.split("=") for c in kv)}}
    if DOWN and name != "FLOAT":
        keys["overrides"] = [{"match": "*.0/*", "kind": "linear", "weight_dtype": "float32", "act_dtype": "float32"}]
    cfg = mcq.QuantConfig.from_dict(keys)
    # the presets' own rotated inputs (act_rotation, which grew out of this check) left out
    cfg = dataclasses.replace(cfg, overrides=tuple(o for o in cfg.overrides if ("act_rotation", True) not in o.settings))
    t = time.time()
    q = mcq.quantize(captured, cfg, tokenizer=tok, progress=False)
    print(spec, "ppl", round(perplexity(q.model(2), ids, 512), 4), f"{time.time()-t:.0f}s", flush=True)
