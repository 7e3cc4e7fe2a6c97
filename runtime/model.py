"""A loaded model: any entry point by name (`run`), prefill/decode/generate for causal LMs (and
chat and streaming, runtime.conversation) and `embed` for encoders, over the rebuilt graphs."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from runtime import lower
from runtime.batching import (
    MIN_PREFILL_LEN,
    EntryPointError,
    GenerationPrompt,
    bind_inputs,
    embedding_entry,
    encode_texts,
    missing_entry_point,
    no_embedding_entry,
    padded_batches,
    single_entry_point,
)
from runtime.compiled import CompiledEntryPoint
from runtime.conversation import TextGeneration
from runtime.ir import Graph
from runtime.memory import release_free_heap
from runtime.ops import DTYPES
from runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    import mcq_format

__all__ = ["EntryPointError", "KVCache", "Model", "from_sections"]


class _KVStore:
    """Preallocated buffers behind one or more KVCache views: per-layer [batch, kv_heads,
    capacity, head_dim] in the KV dtype, and the [batch, capacity] attention mask. `filled`:
    positions written so far (a cache view shorter than that is a branch, see KVCache.grown)."""

    def __init__(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor, capacity: int) -> None:
        length = int(mask.shape[1])
        self.buffers = [t.new_empty((*t.shape[:2], capacity, *t.shape[3:])) for t in tensors]
        for buf, t in zip(self.buffers, tensors):
            buf[:, :, :length].copy_(t)
        self.mask = mask.new_ones((mask.shape[0], capacity))
        self.mask[:, :length].copy_(mask)
        self.capacity, self.filled = capacity, length


class KVCache:
    """Per-layer keys/values ([batch, kv_heads, seq, head_dim], in the KV dtype) and the mask.

    The tensors are views of buffers preallocated to `capacity` positions (`reserve` at prefill;
    generate reserves prompt + new tokens): a decode step writes its new position in place
    instead of copying the whole cache (per-step work that does not grow with the sequence).
    When the buffers are full they are reallocated at twice the size. Caches are values: decoding
    twice from the same cache (branching) copies the buffers for the second branch, so a cache
    never changes once made. `KVCache(tensors, mask)` wraps tensors a caller made (no spare room)."""

    def __init__(self, tensors: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                 reserve: int = 0, _store: _KVStore | None = None) -> None:
        if _store is None:
            _store = _KVStore(tensors, attention_mask, int(attention_mask.shape[1]) + max(0, reserve))
        self._store, self._length = _store, int(attention_mask.shape[1])

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self._store.capacity

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [b[:, :, : self._length] for b in self._store.buffers]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self._store.mask[:, : self._length]

    def grown(self, new: Sequence[torch.Tensor], new_mask: torch.Tensor) -> KVCache:
        """This cache plus the entries of `new` ([batch, kv_heads, n, head_dim]) and their mask
        columns ([batch, n]), written in place where the buffers have room and nobody else
        wrote past this cache's end."""
        n = int(new_mask.shape[1])
        store = self._store
        if store.filled != self._length or self._length + n > store.capacity:
            # a branch (another cache already wrote here) or full: fresh buffers, doubled room
            store = _KVStore(self.tensors, self.attention_mask, max(2 * self._length, self._length + n))
        end = self._length + n
        for buf, t in zip(store.buffers, new):
            buf[:, :, self._length : end].copy_(t)
        store.mask[:, self._length : end].copy_(new_mask)
        store.filled = end
        return KVCache((), store.mask[:, :end], _store=store)


class Model(TextGeneration):
    """Serving entry points of one `.mcq` bundle at one qlevel."""

    bundle: mcq_format.Bundle  # the open file, where runtime.load made the model (keeps its memory map open)

    def __init__(self, graphs: Mapping[str, Graph], tensor: Callable[[str], torch.Tensor],
                 qformat: Mapping[str, Any] | None, manifest: Mapping[str, Any],
                 tokenizer: Tokenizer | None, qlevel: int, compile: bool = False) -> None:
        self.manifest, self.tokenizer, self.qlevel = manifest, tokenizer, qlevel
        self.qformat = qformat
        self._graphs = dict(graphs)
        self._tensor, self._compile = tensor, compile
        self._shared: dict[Any, Any] = {}  # prepared weights, shared by the entry points' graphs
        # (entry point, last-position logits only) -> module. Built at load: what serving runs
        # (a causal LM's decode and last-position prefill, every other entry point); a causal
        # LM's all-logits prefill (perplexity, scoring) is built at its first call: building a
        # graph costs load time and its modules stay resident
        self._built: dict[tuple[str, bool], Callable[..., Any]] = {}
        self._loaded = False
        causal = "prefill" in graphs and "decode" in graphs
        for name in graphs:
            self._module(name, last_position_logits=causal and name == "prefill")
        self._loaded = True
        special = manifest.get("tokenizer") or {}
        self.eos_token_ids: list[int] = list(special.get("eos_token_ids") or [])  # nil: none
        self.pad_token_id: int = int(special.get("pad_token_id", 0) or 0)

    def _module(self, name: str, last_position_logits: bool = False) -> Callable[..., Any]:
        key = (name, last_position_logits)
        if key not in self._built:
            gm = lower.build(self._graphs[name], self._tensor, self.qformat, self.qlevel, shared=self._shared,
                             last_position_logits=last_position_logits)
            self._built[key] = CompiledEntryPoint(name, gm) if self._compile else gm
            if self._loaded:  # a build after load (runtime.load trims once, after all of its builds)
                release_free_heap()
        return self._built[key]

    # -- any entry point -----------------------------------------------------------------------
    @property
    def entry_points(self) -> list[str]:
        return list(self._graphs)

    def _entry(self, name: str, purpose: str = "", last_position_logits: bool = False) -> Callable[..., Any]:
        if name not in self._graphs:
            raise missing_entry_point(name, list(self._graphs), purpose)
        return self._module(name, last_position_logits)

    def run(self, entry_point: str, *args: Any, **kwargs: Any) -> Any:
        """Run one entry point on its inputs (positional in graph order, or by input name).

        Inputs are converted to the graph's dtypes; returns the output tensor, or a tuple of
        them in the entry point's output order when it has several."""
        module = self._entry(entry_point)
        specs = self._graphs[entry_point].inputs
        values = bind_inputs(entry_point, [s.name for s in specs], args, kwargs)
        inputs = [torch.as_tensor(v, dtype=DTYPES.get(s.dtype)) for s, v in zip(specs, values)]
        for spec, x in zip(specs, inputs):
            if not spec.accepts(x.shape):
                raise ValueError(f"{entry_point}: input {spec.name!r} has shape {list(x.shape)}, "
                                 f"the graph takes {spec.shape}")
        with torch.no_grad():
            out = module(*inputs)
        return out[0] if len(out) == 1 else tuple(out)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`run` of the bundle's `forward` entry point (or of its only one)."""
        return self.run(single_entry_point(self.entry_points), *args, **kwargs)

    # -- encoders ------------------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Sentence embeddings [n, dim] (float32) of texts with the bundle's tokenizer: the
        `forward` entry point's `sentence_embedding` output (a str is one text, n = 1)."""
        found = embedding_entry(self._graphs)
        if found is None:
            raise no_embedding_entry(list(self._graphs))
        name, index = found
        encoded = encode_texts(self.tokenizer, texts)
        rows: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
        for chunk, ids, mask in padded_batches(encoded, batch_size, self.pad_token_id):
            out = self.run(name, input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[index]
            for i, row in zip(chunk, out):
                rows[i] = row.to(torch.float32)
        return torch.stack(rows)

    # -- causal LM entry points ----------------------------------------------------------------
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                all_logits: bool = True, reserve: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Run the prompt: logits for every position [batch, seq, vocab] and the KV cache.

        all_logits=False: the last position's logits only ([batch, 1, vocab]), which is what
        generation needs: the vocabulary projection runs on one position, not seq of them. That
        variant of the prefill graph is built at load; the all-logits one at its first call
        (both share the weights).
        reserve: room for that many decode steps in the cache's preallocated buffers."""
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
        prefill = self._entry("prefill", "a causal LM's prompt pass", last_position_logits=not all_logits)
        with torch.no_grad():
            logits, *kv = prefill(input_ids, attention_mask)
        return logits, KVCache(kv, attention_mask, reserve=reserve)

    def decode(self, token_ids: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One new token per sequence: logits [batch, vocab] and the grown cache."""
        decode = self._entry("decode", "a causal LM's one-token step")
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1, 1)
        ones = torch.ones_like(token_ids)
        mask = torch.cat([cache.attention_mask, ones], dim=1)
        with torch.no_grad():
            logits, *new = decode(token_ids, mask, *cache.tensors)
        return logits[:, -1], cache.grown(new, ones)

    # -- generation ----------------------------------------------------------------------------
    def _need_causal_lm(self) -> None:
        self._entry("prefill", "generate needs a causal LM bundle")
        self._entry("decode", "generate needs a causal LM bundle")

    def _token_steps(self, request: GenerationPrompt, max_new_tokens: int, do_sample: bool, temperature: float,
                     top_k: int, top_p: float, seed: int, stop_at_eos: bool) -> Iterator[list[int | None]]:
        ids, mask = torch.from_numpy(request.ids), torch.from_numpy(request.mask)
        gen = torch.Generator().manual_seed(seed)
        logits, cache = self.prefill(ids, mask, all_logits=False, reserve=max_new_tokens)
        next_logits = logits[:, -1]
        done = torch.zeros(len(request.ids), dtype=torch.bool)
        for step in range(max_new_tokens):
            tok = _pick(next_logits, do_sample, temperature, top_k, top_p, gen)
            tok = torch.where(done, torch.full_like(tok, self.pad_token_id), tok)
            yield [None if d else t for t, d in zip(tok.tolist(), done.tolist())]
            if stop_at_eos and self.eos_token_ids:
                done |= torch.isin(tok, torch.tensor(self.eos_token_ids))
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:
                next_logits, cache = self.decode(tok, cache)


def from_sections(sections: Mapping[str, Any], tensor: Callable[[str], torch.Tensor],
                  qlevel: int | None = None, compile: bool = False) -> Model:
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
    return Model(graphs, tensor, qformat, manifest, tok, qlevel, compile)


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
