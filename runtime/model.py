"""A loaded model: prefill, decode and generate over the rebuilt graphs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from runtime import lower
from runtime.ir import Graph
from runtime.tokenizer import Tokenizer

MIN_PREFILL_LEN = 2  # the prefill graph is exported for seq >= 2; shorter prompts are left-padded


@dataclass
class KVCache:
    """Per-layer keys/values ([batch, kv_heads, seq, head_dim], in the KV dtype) and the mask."""

    tensors: list[torch.Tensor]
    attention_mask: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])


class Model:
    """Serving entry points of one `.mcq` bundle at one qlevel."""

    def __init__(self, graphs: Mapping[str, Graph], tensor: Callable[[str], torch.Tensor],
                 qformat: Mapping[str, Any] | None, manifest: Mapping[str, Any],
                 tokenizer: Tokenizer | None, qlevel: int) -> None:
        self.manifest, self.tokenizer, self.qlevel = manifest, tokenizer, qlevel
        self.qformat = qformat
        self._prefill = lower.build(graphs["prefill"], tensor, qformat, qlevel)
        self._decode = lower.build(graphs["decode"], tensor, qformat, qlevel)
        special = manifest.get("tokenizer") or {}
        self.eos_token_ids: list[int] = list(special.get("eos_token_ids", []))
        self.pad_token_id: int = int(special.get("pad_token_id", 0) or 0)

    # -- entry points --------------------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """Run the prompt: logits for every position [batch, seq, vocab] and the KV cache."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask, dtype=torch.long)
        short = MIN_PREFILL_LEN - input_ids.shape[1]
        if short > 0:
            input_ids = torch.nn.functional.pad(input_ids, (short, 0), value=self.pad_token_id)
            attention_mask = torch.nn.functional.pad(attention_mask, (short, 0), value=0)
        with torch.no_grad():
            logits, *kv = self._prefill(input_ids, attention_mask)
        return logits, KVCache(list(kv), attention_mask)

    def decode(self, token_ids: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One new token per sequence: logits [batch, vocab] and the grown cache."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1, 1)
        mask = torch.cat([cache.attention_mask, torch.ones_like(token_ids)], dim=1)
        with torch.no_grad():
            logits, *new = self._decode(token_ids, mask, *cache.tensors)
        grown = [torch.cat([old, n], dim=2) for old, n in zip(cache.tensors, new)]
        return logits[:, -1], KVCache(grown, mask)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True):
        """Greedy or sampled continuation. Text in gives text out; token ids in give ids out."""
        texts = isinstance(prompt, str) or (len(prompt) > 0 and isinstance(prompt[0], str))
        single = isinstance(prompt, str) or (len(prompt) > 0 and isinstance(prompt[0], int))
        batch: list[list[int]]
        if texts:
            if self.tokenizer is None:
                raise ValueError("this bundle has no tokenizer: pass token ids")
            batch = [self.tokenizer.encode(p) for p in ([prompt] if isinstance(prompt, str) else prompt)]
        else:
            batch = [list(map(int, p)) for p in ([prompt] if single else prompt)]  # type: ignore[arg-type]
        if any(len(b) == 0 for b in batch):
            raise ValueError("empty prompt")
        width = max(len(b) for b in batch)
        ids = torch.tensor([[self.pad_token_id] * (width - len(b)) + b for b in batch])
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        gen = torch.Generator().manual_seed(seed)
        logits, cache = self.prefill(ids, mask)
        next_logits = logits[:, -1]
        out: list[list[int]] = [[] for _ in batch]
        done = torch.zeros(len(batch), dtype=torch.bool)
        for step in range(max_new_tokens):
            tok = _pick(next_logits, do_sample, temperature, top_k, top_p, gen)
            tok = torch.where(done, torch.full_like(tok, self.pad_token_id), tok)
            for i, t in enumerate(tok.tolist()):
                if not done[i]:
                    out[i].append(t)
            if stop_at_eos and self.eos_token_ids:
                done |= torch.isin(tok, torch.tensor(self.eos_token_ids))
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:
                next_logits, cache = self.decode(tok, cache)
        if texts:
            assert self.tokenizer is not None
            decoded = [self.tokenizer.decode([t for t in o if t not in self.eos_token_ids]) for o in out]
            return decoded[0] if isinstance(prompt, str) else decoded
        return out[0] if single else out


def from_sections(sections: Mapping[str, Any], tensor: Callable[[str], torch.Tensor],
                  qlevel: int | None = None) -> Model:
    """A Model over decoded bundle sections (from a file or still in memory) and a tensor source.

    qlevel None takes the bundle's own (manifest quant.qlevel); a bundle without quantized nodes
    always runs its float graph."""
    manifest = sections["manifest"]
    graphs = {name: Graph.decode(sections[ep["graph"]]) for name, ep in manifest["entry_points"].items()}
    qformat = sections.get("qformat")
    tok = Tokenizer(sections["tokenizer"]) if sections.get("tokenizer") else None
    if qlevel is None:
        qlevel = int(manifest.get("quant", {}).get("qlevel", 0))
    if not (qformat or {}).get("nodes"):
        qlevel = 0  # nothing is quantized: every qlevel is the float graph
    return Model(graphs, tensor, qformat, manifest, tok, qlevel)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float,
          gen: torch.Generator) -> torch.Tensor:
    logits = logits.to(torch.float32)
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / max(temperature, 1e-6)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
