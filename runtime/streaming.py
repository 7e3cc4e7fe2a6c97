"""Streaming text out of generated tokens: pieces that never end inside a multi-byte character."""
from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"  # what a decoder gives for the bytes of a character not yet complete


class TextStream:
    """The text of a growing token sequence, handed out in pieces.

    Each push decodes the whole sequence (a tokenizer's decoder may join tokens differently at
    word starts than it decodes them one by one; the whole sequence is what `generate` returns, so
    the pieces concatenate to it) and hands out what is new, holding back trailing replacement
    characters: the first bytes of a character whose last bytes come with a later token. Decoding
    n tokens n times is quadratic, a few ms for a thousand tokens beside a model step each."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self.text = ""  # handed out so far

    def push(self, token: int) -> str:
        """The new text after one more token ('' while a character is incomplete)."""
        self.ids.append(token)
        return self._new(self._decode(self.ids).rstrip(REPLACEMENT))

    def flush(self) -> str:
        """What is left at the end: held-back replacement characters of bytes that never completed."""
        return self._new(self._decode(self.ids))

    def _new(self, text: str) -> str:
        # a decoder that rewrote text already handed out (whitespace clean-up) cannot take it back:
        # the stream then waits until the text extends what was handed out again
        if len(text) <= len(self.text) or not text.startswith(self.text):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece
