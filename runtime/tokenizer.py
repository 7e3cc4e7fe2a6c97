"""The embedded tokenizer: a Hugging Face `tokenizers` JSON document stored in the bundle."""
from __future__ import annotations

from typing import Any, Mapping


class Tokenizer:
    def __init__(self, section: Mapping[str, Any]) -> None:
        if section.get("kind") != "hf-tokenizers-json":
            raise ValueError(f"tokenizer section: unsupported kind {section.get('kind')!r}")
        from tokenizers import Tokenizer as _HF  # only needed where text goes in or out

        self._tok = _HF.from_str(section["json"])
        self._tok.no_padding()  # batches are padded by the model (a fixed padding would hide lengths)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
