"""The embedded tokenizer: a Hugging Face `tokenizers` JSON document stored in the bundle."""
from __future__ import annotations

from typing import Any, Mapping

from mcq_format.schema import tokenizer_json


class Tokenizer:
    def __init__(self, section: Mapping[str, Any]) -> None:
        from tokenizers import Tokenizer as _HF  # only needed where text goes in or out

        try:
            text = tokenizer_json(dict(section))
        except ValueError as e:
            raise ValueError(f"tokenizer section: {e}") from None
        self._tok = _HF.from_str(text)
        self._tok.no_padding()  # batches are padded by the model (a fixed padding would hide lengths)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
