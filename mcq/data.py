"""Calibration data: the built-in English text, plain-text files, and JSON/JSONL records.

Records follow the reference schema {instruction, input, output}; each becomes the prompt the
model would see at serving time. Samples are token-id lists; batching never pads. A causal LM
calibrates on fixed-length chunks of the token stream; an encoder on separate texts (sentences
of a .txt file, or records), each tokenized on its own with its special tokens.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Callable

Encode = Callable[[str], list[int]]

PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


class DataError(ValueError):
    """Calibration data could not be read; the message names the file and the place."""


def builtin_text() -> str:
    return resources.files("mcq").joinpath("calibration_text.txt").read_text(encoding="utf-8")


def chunk_tokens(ids: list[int], seq_len: int, max_samples: int | None) -> list[list[int]]:
    chunks = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not chunks and len(ids) >= 2:
        chunks = [ids]
    return chunks[:max_samples] if max_samples else chunks


def read_records(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of records {{instruction, input, output}}")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
            raise DataError(f"{path}: record {i} has no string 'instruction'")
    return records


def format_record(r: dict[str, str]) -> str:
    if r.get("input"):
        return PROMPT_WITH_INPUT.format(instruction=r["instruction"], input=r["input"])
    return PROMPT_NO_INPUT.format(instruction=r["instruction"])


def load_samples(encode: Encode, source: str | Path | None = None, seq_len: int = 256,
                 max_samples: int | None = 64) -> list[list[int]]:
    """Token-id samples from the built-in text (source None), a .txt file, or .json/.jsonl records."""
    if source is None:
        return chunk_tokens(encode(builtin_text()), seq_len, max_samples)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: calibration data file not found")
    if path.suffix in (".json", ".jsonl"):
        samples = [encode(format_record(r))[:seq_len] for r in read_records(path)]
        samples = [s for s in samples if len(s) >= 2]
        return samples[:max_samples] if max_samples else samples
    return chunk_tokens(encode(path.read_text(encoding="utf-8")), seq_len, max_samples)


def split_sentences(text: str) -> list[str]:
    """Sentences of plain text: split after . ! ? followed by white space, and at blank lines."""
    return [t.strip() for t in re.split(r"(?<=[.!?])\s+|\n\s*\n", text) if t.strip()]


def load_texts(source: str | Path | None = None, max_samples: int | None = 64) -> list[str]:
    """Separate calibration texts: the sentences of the built-in text (source None) or of a .txt
    file, or the prompts of .json/.jsonl records; at most `max_samples`, spread over the source."""
    if source is None:
        texts = split_sentences(builtin_text())
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: calibration data file not found")
        if path.suffix in (".json", ".jsonl"):
            texts = [format_record(r) for r in read_records(path)]
        else:
            texts = split_sentences(path.read_text(encoding="utf-8"))
    if max_samples and len(texts) > max_samples:
        step = len(texts) / max_samples
        texts = [texts[int(i * step)] for i in range(max_samples)]
    return texts
