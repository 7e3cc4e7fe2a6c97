"""How texts become padded batches for an encoder's entry point, and prompts become a causal
model's left-padded batch (and its tokens text again), shared by the reference path
(runtime.model) and the engine (runtime.engine.model): torch-free."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


class EntryPointError(ValueError):
    """The bundle has no entry point of that name (or not the inputs/outputs a helper needs)."""


EMBEDDING_OUTPUT = "sentence_embedding"  # encoder bundles: mean-pooled, L2-normalized states
MIN_PREFILL_LEN = 2  # graphs are exported for seq >= 2; shorter inputs are padded


def missing_entry_point(name: str, entry_points: Sequence[str], purpose: str = "") -> EntryPointError:
    hint = f" ({purpose})" if purpose else ""
    return EntryPointError(f"this bundle has no {name!r} entry point{hint}; it has "
                           f"{', '.join(map(repr, entry_points))}: use model.run(name, ...)")


def no_embedding_entry(entry_points: Sequence[str]) -> EntryPointError:
    return EntryPointError(f"this bundle has no entry point with a {EMBEDDING_OUTPUT!r} output "
                           f"(entry points: {', '.join(entry_points)}); embed needs an encoder bundle")


def bind_inputs(entry_point: str, names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """An entry point's inputs in graph order from positional and by-name arguments (`run`'s
    calling convention on both execution paths), or TypeError naming the surplus or missing."""
    if len(args) > len(names):
        raise TypeError(f"{entry_point}: {len(args)} inputs given, the graph takes {len(names)}")
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in values or key not in names:
            raise TypeError(f"{entry_point}: unexpected or repeated input {key!r}")
        values[key] = value
    missing = [n for n in names if n not in values]
    if missing:
        raise TypeError(f"{entry_point}: missing input(s) {', '.join(missing)}")
    return [values[n] for n in names]


def single_entry_point(entry_points: Sequence[str]) -> str:
    """The entry point `model(...)` runs: `forward`, or the bundle's only one."""
    return entry_points[0] if len(entry_points) == 1 and "forward" not in entry_points else "forward"


def embedding_entry(graphs: Mapping[str, Any]) -> tuple[str, int] | None:
    """(entry point, index of its sentence-embedding output), or None for a bundle without one."""
    for name, graph in graphs.items():
        names = [o for o, _ in graph.outputs]
        if EMBEDDING_OUTPUT in names:
            return name, names.index(EMBEDDING_OUTPUT)
    return None


def padded_batches(encoded: Sequence[Sequence[int]], batch_size: int,
                   pad_id: int) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    """(indices into `encoded`, ids [n, width], mask [n, width]) per batch: right-padded, texts of
    similar lengths together (they pad less)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(MIN_PREFILL_LEN, *(len(encoded[i]) for i in chunk))
        ids = np.array([list(encoded[i]) + [pad_id] * (width - len(encoded[i])) for i in chunk], dtype=np.int64)
        mask = np.array([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in chunk], dtype=np.int64)
        yield chunk, ids, mask


def encode_texts(tokenizer: Any, texts: str | Sequence[str]) -> list[list[int]]:
    """Token ids of each text (a str is one text), or ValueError naming what is missing."""
    if tokenizer is None:
        raise ValueError("this bundle has no tokenizer: run the entry point on token ids with model.run")
    encoded = [tokenizer.encode(t) for t in ([texts] if isinstance(texts, str) else texts)]
    if not encoded:
        raise ValueError("embed: no texts")
    return encoded


class GenerationPrompt:
    """A `generate` prompt (a text, texts, token ids, or lists of them) as a left-padded batch:
    `ids` and `mask` [n, width] int64; `result(out)` gives the new tokens back in the prompt's
    form (text in, text out; one prompt in, one result out)."""

    def __init__(self, prompt: Any, tokenizer: Any, pad_id: int) -> None:
        self.texts = isinstance(prompt, str) or (len(prompt) > 0 and isinstance(prompt[0], str))
        self.single = isinstance(prompt, str) or (len(prompt) > 0 and isinstance(prompt[0], (int, np.integer)))
        if self.texts:
            if tokenizer is None:
                raise ValueError("this bundle has no tokenizer: pass token ids")
            batch = [tokenizer.encode(p) for p in ([prompt] if isinstance(prompt, str) else prompt)]
        else:
            batch = [list(map(int, p)) for p in ([prompt] if self.single else prompt)]
        if any(len(b) == 0 for b in batch):
            raise ValueError("empty prompt")
        width = max(len(b) for b in batch)
        self.ids = np.array([[pad_id] * (width - len(b)) + b for b in batch], dtype=np.int64)
        self.mask = np.array([[0] * (width - len(b)) + [1] * len(b) for b in batch], dtype=np.int64)
        self.tokenizer = tokenizer

    def result(self, out: list[list[int]], eos_ids: Sequence[int]) -> Any:
        if self.texts:
            decoded = [self.tokenizer.decode([t for t in o if t not in eos_ids]) for o in out]
            return decoded[0] if self.single else decoded
        return out[0] if self.single else out
