"""all-MiniLM-L6-v2 (real weights) with the W8A8 preset: sentence-embedding cosine to fp32 and
qlevel agreement (issue 4 target: mean cosine >= 0.99 on 50 sentences).

Slow (about a minute): marked `slow`, still run in CI.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcq.evaluate import cosines, reference_embeddings

pytestmark = pytest.mark.slow

SENTENCES = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "minilm_sentences.txt"


@pytest.fixture(scope="module")
def minilm(real_example):
    model, tok, _, path = real_example("minilm", "W8A8")
    texts = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tok, path, texts, reference_embeddings(model, tok, texts)


def test_evaluation_sentences_are_not_calibration_data(minilm):
    from mcq.data import load_texts

    _, _, texts, _ = minilm
    assert len(texts) == 50 and not set(texts) & set(load_texts(None, None))


def test_w8a8_mean_cosine_to_fp32_at_least_099(minilm):
    import runtime

    _, path, texts, reference = minilm
    c = cosines(runtime.load(path, qlevel=4).embed(texts), reference)
    print(f"qlevel 4: mean cosine {c.mean():.5f}, min {c.min():.5f}")
    assert c.mean() >= 0.99


def test_qlevel3_and_qlevel4_embeddings_bit_identical(minilm):
    import runtime

    _, path, texts, _ = minilm
    q3, q4 = (runtime.load(path, qlevel=level, engine="reference") for level in (3, 4))
    assert torch.equal(q3.embed(texts), q4.embed(texts))


def test_bundled_tokenizer_matches_hugging_face(minilm):
    import runtime

    tok, path, texts, _ = minilm
    bundled = runtime.load(path).tokenizer
    assert [bundled.encode(t) for t in texts] == [tok(t)["input_ids"] for t in texts]
