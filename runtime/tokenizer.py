"""The embedded tokenizer: a Hugging Face `tokenizers` JSON document stored in the bundle."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcq_format.constants import TOKENIZER_KIND_HF_ZLIB
from mcq_format.schema import tokenizer_json
from runtime.chat import ChatTemplate, chat_template_of


class Tokenizer:
    """Checked at load (`mcq_format`'s section schema); decompressed and parsed at its first use
    (parsing a large vocabulary takes a noticeable fraction of a load, which serving on token ids
    never pays, and its JSON text is not held meanwhile)."""

    def __init__(self, section: Mapping[str, Any]) -> None:
        self._section = dict(section)
        self._parsed: Any = None
        # the template is compiled at its first rendering (jinja2 is imported only then)
        self.chat_template: ChatTemplate | None = chat_template_of(self._section)
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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text. add_special_tokens=False: without the tokenizer's post-processing
        (e.g. a BOS it adds), for a prompt a chat template rendered, which writes its own."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int]) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=True)
        return text
