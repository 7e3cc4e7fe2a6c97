"""SmolLM2-135M-Instruct (real weights) with the W8A8KV8 preset: accuracy and qlevel agreement.

Slow (a few minutes): marked `slow`, still run in CI.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from mcq.evaluate import AGREEMENT_PROMPTS

pytestmark = pytest.mark.slow

HELDOUT = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "heldout_en.txt"
PROMPTS = AGREEMENT_PROMPTS


def test_perplexity_within_1_percent_of_fp32(smollm2):
    # issue 4's W8A8KV8 target, on every CPU (issue 22): the bundle is the same bytes on every float
    # kernel path and measures +0.63 % to +0.90 % across them (docs/benchmarks.md)
    from mcq.evaluate import EagerPrefill, perplexity

    import runtime

    model, tok, _, path = smollm2
    ids = tok.backend_tokenizer.encode(HELDOUT.read_text()).ids
    assert len(ids) >= 4096
    fp32 = perplexity(EagerPrefill(model), ids)
    q4 = perplexity(runtime.load(path, qlevel=4), ids)
    print(f"fp32 {fp32:.3f}  qlevel4 {q4:.3f}  ({100 * (q4 / fp32 - 1):+.2f} %)")
    assert q4 <= fp32 * 1.01


def test_qlevel3_and_qlevel4_same_greedy_tokens(smollm2):
    import runtime

    _, tok, _, path = smollm2
    prompts = [tok.backend_tokenizer.encode(p).ids for p in PROMPTS]
    out3 = runtime.load(path, qlevel=3, engine="reference").generate(prompts, max_new_tokens=64, stop_at_eos=False)
    out4 = runtime.load(path, qlevel=4, engine="reference").generate(prompts, max_new_tokens=64, stop_at_eos=False)
    assert out3 == out4


def test_capital_of_france(smollm2):
    import runtime

    _, _, _, path = smollm2
    text = runtime.load(path).generate("The capital of France is", max_new_tokens=16)
    assert "Paris" in text
