"""Feasibility check for W8A8KV8: SmolLM2 with its residual stream rotated before capture.

    python benchmarks/smollm2_rotation.py W8A8KV8 W8A8KV8+act_outlier_threshold=0 [--down]

The RMSNorm weights are folded into the linears that read them, then a seeded random orthogonal
Q (576 x 576) rotates the residual stream: embeddings E Q, readers W Q, writers Q^T W, an untied
lm_head (final norm folded in). The float model is unchanged (perplexity equal to fp32's).
--down also rotates the down_proj inputs by a random orthogonal R (1536 x 1536): a float linear
before each down_proj (kept float by an override) and down_proj's weight W R. Each argument is a
preset with +key=value changes; prints the held-out perplexity at qlevel 2. Not part of mcq:
QuaRot-style rotation is measured here before anyone builds it into capture.
"""
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
with torch.no_grad():
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
DOWN = "--down" in sys.argv
if DOWN:
    sys.argv.remove("--down")
    di = model.config.intermediate_size
    R, r2 = torch.linalg.qr(torch.randn(di, di, generator=g, dtype=torch.float64))
    R = R * torch.sign(torch.diagonal(r2))
    with torch.no_grad():
        for layer in m.layers:
            f = layer.mlp
            down = f.down_proj
            down.weight.copy_((down.weight.double() @ R).float())  # (u R) (W R)^T = u W^T
            f.down_proj = torch.nn.Sequential(Rot(R.t().contiguous().float()), down)
captured = mcq.capture_model(model)
for spec in ["FLOAT"] + sys.argv[1:]:
    name, *kv = spec.split("+")
    keys = {"preset": name, **{k: yaml.safe_load(v) for k, v in (c.split("=") for c in kv)}}
    if DOWN and name != "FLOAT":
        keys["overrides"] = [{"match": "*.down_proj.0/*", "kind": "linear", "weight_dtype": "float32", "act_dtype": "float32"}]
    cfg = mcq.QuantConfig.from_dict(keys)
    t = time.time()
    q = mcq.quantize(captured, cfg, tokenizer=tok, progress=False)
    print(spec, "ppl", round(perplexity(q.model(2), ids, 512), 4), f"{time.time()-t:.0f}s", flush=True)
