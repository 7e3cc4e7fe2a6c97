"""Accuracy measures shared by tests and benchmarks: perplexity of a runtime model on a token
stream, in independent windows (same protocol for every qlevel and for the float model, so the
numbers compare), and cosine similarity of sentence embeddings to the float encoder's."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm


# Prompts of the qlevel-3 vs qlevel-4 greedy agreement check (tests and benchmarks share them).
AGREEMENT_PROMPTS = (
    "The capital of France is",
    "To make a cup of tea, first",
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "The main reason the sky looks blue is",
)


class EagerPrefill:
    """A float torch model (a Hugging Face causal LM) behind the runtime's prefill signature, so
    the float baseline is scored on the same windows and positions as the bundles."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            return self.model(input_ids=x).logits, None


def window_nll(model: Any, ids: Sequence[int], window: int = 512, progress: bool = False) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of every token after the first of each
    `window`-token chunk (last chunk kept if it has >= 2 tokens): the parts perplexity is made of,
    so several texts pool into one figure. `model` is a runtime Model (anything with
    prefill(ids) -> (logits, _), logits a torch tensor or, from the native engine, a numpy array)."""
    ids = list(ids)
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    chunks = [c for c in chunks if len(c) >= 2]
    total, count = 0.0, 0
    for c in tqdm(chunks, desc="perplexity", unit="window", disable=not progress):
        x = torch.tensor([c])
        logits = model.prefill(x)[0]
        # the engine's arrays are read-only views of its buffers: torch wants writable memory
        logits = logits if isinstance(logits, torch.Tensor) else torch.tensor(logits)
        logp = torch.log_softmax(logits[0, :-1].to(torch.float64), dim=-1)
        total += float(-logp.gather(1, x[0, 1:, None]).sum())
        count += len(c) - 1
    return total, count


def perplexity(model: Any, ids: Sequence[int], window: int = 512, progress: bool = False) -> float:
    """exp(mean NLL) over `window_nll`'s windows (same protocol for every qlevel, the engine and
    the float model, so the numbers compare)."""
    total, count = window_nll(model, ids, window, progress)
    return math.exp(total / count)


def reference_embeddings(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Sentence embeddings [n, dim] of the eager float HF encoder: mean pooling over the attention
    mask, then L2 normalization (sentence-transformers' Pooling + Normalize, written out here
    independently of the captured graph's)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


def cosines(a: Any, b: Any) -> torch.Tensor:
    """Row-wise cosine similarity of two [n, dim] embedding matrices (torch tensors, or numpy
    arrays from the native engine), in float64."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)
