"""The embedded tokenizer: a Hugging Face `tokenizers` JSON document stored in the bundle."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcq_format.constants import TOKENIZER_KIND_HF_ZLIB
from mcq_format.schema import tokenizer_json


class Tokenizer:
    """Checked at load (`mcq_format`'s section schema); decompressed and parsed at its first use
    (parsing a large vocabulary takes a noticeable fraction of a load, which serving on token ids
    never pays, and its JSON text is not held meanwhile)."""

    def __init__(self, section: Mapping[str, Any]) -> None:
        self._section = dict(section)
        self._parsed: Any = None
        if self._section.get("kind") != TOKENIZER_KIND_HF_ZLIB:
            self._text()  # no inflating to do: plain JSON is there as is, an unknown kind fails now

    def _text(self) -> str:
        try:
            return tokenizer_json(self._section)
        except ValueError as e:
            raise ValueError(f"tokenizer section: {e}") from None

    @property
    def _tok(self) -> Any:
        if self._parsed is None:
            from tokenizers import Tokenizer as _HF  # only needed where text goes in or out

            text = self._text()
            try:
                self._parsed = _HF.from_str(text)
            except Exception as e:  # noqa: BLE001 - the library raises its own exception types
                raise ValueError(f"tokenizer section: not a tokenizers document ({e})") from None
            self._parsed.no_padding()  # the model pads batches (a fixed padding would hide lengths)
        return self._parsed

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=True)
        return text
