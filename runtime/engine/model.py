"""A bundle served by the native engine: prefill, decode and generate on numpy arrays, with no
torch in the process (runtime.load(path, engine=True)). Same entry points and arguments as
`runtime.Model`; arrays in and out are numpy, and the KV cache lives in buffers preallocated for
the prompt plus the new tokens, grown by doubling, written in place by each decode step."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from runtime.batching import (
    MIN_PREFILL_LEN,
    GenerationPrompt,
    bind_inputs,
    embedding_entry,
    encode_texts,
    missing_entry_point,
    no_embedding_entry,
    padded_batches,
    single_entry_point,
)
from runtime.conversation import TextGeneration
from runtime.engine import Engine, Unsupported
from runtime.ir import Graph
from runtime.tokenizer import Tokenizer


class EngineCache:
    """Per-layer keys/values [batch, kv_heads, length, head_dim] (the KV dtype) and the attention
    mask [batch, length], as views of buffers with room for more positions. A cache is a value:
    decoding from an older cache again (a branch) copies the buffers first."""

    def __init__(self, tensors: Sequence[np.ndarray], mask: np.ndarray, reserve: int = 0) -> None:
        length = int(mask.shape[1])
        capacity = length + max(0, reserve)
        self._buffers = [np.empty((*t.shape[:2], capacity, *t.shape[3:]), dtype=t.dtype) for t in tensors]
        for buf, t in zip(self._buffers, tensors):
            buf[:, :, :length] = t
        self._mask = np.ones((mask.shape[0], capacity), dtype=np.int64)
        self._mask[:, :length] = mask
        self._filled = [length]  # shared by the caches over these buffers
        self.length = length

    @property
    def tensors(self) -> list[np.ndarray]:
        return [b[:, :, : self.length] for b in self._buffers]

    @property
    def attention_mask(self) -> np.ndarray:
        return self._mask[:, : self.length]

    def grown(self, new: Sequence[np.ndarray], new_mask: np.ndarray) -> EngineCache:
        n = int(new_mask.shape[1])
        end = self.length + n
        if self._filled[0] != self.length or end > self._buffers[0].shape[2]:
            # a branch, or full: fresh buffers with doubled room
            fresh = EngineCache(self.tensors, self.attention_mask, reserve=max(self.length, n))
            return fresh.grown(new, new_mask)
        for buf, t in zip(self._buffers, new):
            buf[:, :, self.length : end] = t
        self._mask[:, self.length : end] = new_mask
        self._filled[0] = end
        grown = object.__new__(EngineCache)
        grown._buffers, grown._mask, grown._filled, grown.length = self._buffers, self._mask, self._filled, end
        return grown


class EngineModel(TextGeneration):
    """Serving entry points of one bundle on the native engine (qlevel 4)."""

    def __init__(self, sections: Mapping[str, Any], bundle: Any) -> None:
        manifest = sections["manifest"]
        self.manifest, self.bundle = manifest, bundle
        self.qformat = sections.get("qformat")
        self.qlevel = 4 if (self.qformat or {}).get("nodes") else 0
        graphs = {name: Graph.decode(sections[ep["graph"]]) for name, ep in manifest["entry_points"].items()}
        self.tokenizer = Tokenizer(sections["tokenizer"]) if sections.get("tokenizer") else None
        causal = "prefill" in graphs and "decode" in graphs
        self.engine = Engine(graphs, bundle.tensor, self.qformat, ("prefill",) if causal else (),
                             release=bundle.release_pages)
        if self.engine.unsupported:
            name, why = next(iter(self.engine.unsupported.items()))
            raise Unsupported(f"entry point {name!r}: {why}")
        special = manifest.get("tokenizer") or {}
        self.eos_token_ids: list[int] = list(special.get("eos_token_ids") or [])  # nil: none
        self.pad_token_id: int = int(special.get("pad_token_id", 0) or 0)

    @property
    def entry_points(self) -> list[str]:
        return list(self.engine.graphs)

    def run(self, entry_point: str, *args: Any, **kwargs: Any) -> Any:
        """Run one entry point on its inputs (positional in graph order, or by input name; numpy
        arrays or anything np.asarray takes, torch CPU tensors included), converted to the
        graph's dtypes; returns the output array, or a tuple of them in the entry point's
        output order when it has several."""
        if entry_point not in self.engine.graphs:
            raise missing_entry_point(entry_point, self.entry_points)
        graph = self.engine.graphs[entry_point]
        values = bind_inputs(entry_point, [s.name for s in graph.inputs], args, kwargs)
        out = self.engine.run(entry_point, values)
        return out[0] if len(out) == 1 else tuple(out)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`run` of the bundle's `forward` entry point (or of its only one)."""
        return self.run(single_entry_point(self.entry_points), *args, **kwargs)

    def _need(self, name: str, purpose: str) -> None:
        if name not in self.engine.graphs:
            raise missing_entry_point(name, self.entry_points, purpose)

    def embed(self, texts: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings [n, dim] (float32) of texts: the encoder entry point's
        `sentence_embedding` output, batched as the reference path batches them."""
        found = embedding_entry(self.engine.graphs)
        if found is None:
            raise no_embedding_entry(self.entry_points)
        name, index = found
        encoded = encode_texts(self.tokenizer, texts)
        rows: list[np.ndarray] = [np.empty(0)] * len(encoded)
        for chunk, ids, mask in padded_batches(encoded, batch_size, self.pad_token_id):
            out = self.engine.run(name, [ids, mask])[index]
            for i, row in zip(chunk, out):
                rows[i] = row.astype(np.float32)
        return np.stack(rows)

    def prefill(self, input_ids: Any, attention_mask: Any = None, all_logits: bool = True,
                reserve: int = 0) -> tuple[np.ndarray, EngineCache]:
        self._need("prefill", "a causal LM's prompt pass")
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        short = MIN_PREFILL_LEN - ids.shape[1]
        if short > 0:  # left-padded, as the reference path does
            ids = np.pad(ids, ((0, 0), (short, 0)), constant_values=self.pad_token_id)
            mask = np.pad(mask, ((0, 0), (short, 0)), constant_values=0)
        logits, *kv = self.engine.run("prefill", [ids, mask], last_position_logits=not all_logits)
        return logits, EngineCache(kv, mask, reserve=reserve)

    def decode(self, token_ids: Any, cache: EngineCache) -> tuple[np.ndarray, EngineCache]:
        self._need("decode", "a causal LM's one-token step")
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1, 1)
        if tokens.shape[0] != cache.attention_mask.shape[0]:
            raise ValueError(f"decode: {tokens.shape[0]} tokens for a cache of "
                             f"{cache.attention_mask.shape[0]} sequences")
        ones = np.ones_like(tokens)
        mask = np.concatenate([cache.attention_mask, ones], axis=1)
        # the mask and past tensors are the cache's own, already of the graph's shapes
        logits, *new = self.engine.run("decode", [tokens, mask, *cache.tensors], checked=1)
        return logits[:, -1], cache.grown(new, ones)

    def _need_causal_lm(self) -> None:
        self._need("prefill", "generate needs a causal LM bundle")
        self._need("decode", "generate needs a causal LM bundle")

    def _token_steps(self, request: GenerationPrompt, max_new_tokens: int, do_sample: bool, temperature: float,
                     top_k: int, top_p: float, seed: int, stop_at_eos: bool) -> Iterator[list[int | None]]:
        """Greedy tokens are the reference path's; sampling draws from numpy's generator (seeded),
        so its tokens differ from the reference path's torch draws."""
        # numpy.random only where sampling asks for it (it imports hashlib: OpenSSL's pages in a server)
        rng = np.random.default_rng(seed) if do_sample else None
        logits, cache = self.prefill(request.ids, request.mask, all_logits=False, reserve=max_new_tokens)
        step_logits = logits[:, -1]
        done = np.zeros(len(request.ids), dtype=bool)
        eos = np.array(self.eos_token_ids, dtype=np.int64)
        for step in range(max_new_tokens):
            tok = np.where(done, self.pad_token_id, _pick(step_logits, do_sample, temperature, top_k, top_p, rng))
            yield [None if d else int(t) for t, d in zip(tok.tolist(), done.tolist())]
            if stop_at_eos and eos.size:
                done |= np.isin(tok, eos)
                if done.all():
                    break
            if step + 1 < max_new_tokens:
                step_logits, cache = self.decode(tok, cache)


def _pick(logits: np.ndarray, do_sample: bool, temperature: float, top_k: int, top_p: float,
          rng: Any) -> np.ndarray:
    logits = logits.astype(np.float64)
    if not do_sample:
        picked: np.ndarray = logits.argmax(axis=-1)
        return picked
    logits = logits / max(temperature, 1e-6)
    if top_k > 0:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        ranked = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(ranked - ranked[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        drop = np.cumsum(probs, axis=-1) - probs > top_p
        ranked = np.where(drop, -np.inf, ranked)
        np.put_along_axis(logits, order, ranked, axis=-1)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=p) for p in probs], dtype=np.int64)
