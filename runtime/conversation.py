"""Chat and streaming on a causal LM: what the reference Model and the native EngineModel share.

A model class mixes `TextGeneration` in and provides `_need_causal_lm` and `_token_steps` (the
generation loop, one step at a time, on its own tensors)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from runtime.batching import GenerationPrompt
from runtime.chat import ChatTemplate
from runtime.streaming import TextStream
from runtime.tokenizer import Tokenizer


class NoChatTemplateError(ValueError):
    """`chat` on a bundle whose tokenizer section has no chat template (or no tokenizer at all)."""


class TextGeneration:
    tokenizer: Tokenizer | None
    eos_token_ids: list[int]
    pad_token_id: int

    def generate(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True) -> Any:
        """Greedy or sampled continuation. Text in gives text out; token ids in give ids out.
        (`stream_generate`: the same as text pieces; `chat`: a conversation, by the chat template.)"""
        self._need_causal_lm()
        request = GenerationPrompt(prompt, self.tokenizer, self.pad_token_id)
        out: list[list[int]] = [[] for _ in request.ids]
        for tokens in self._token_steps(request, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                                        stop_at_eos):
            for row, t in zip(out, tokens):
                if t is not None:
                    row.append(t)
        return request.result(out, self.eos_token_ids)

    def _need_causal_lm(self) -> None:
        raise NotImplementedError

    def _token_steps(self, request: GenerationPrompt, max_new_tokens: int, do_sample: bool, temperature: float,
                     top_k: int, top_p: float, seed: int, stop_at_eos: bool) -> Iterator[list[int | None]]:
        """Per step, each sequence's new token (None for one already finished)."""
        raise NotImplementedError

    # -- chat ----------------------------------------------------------------------------------
    def _template(self) -> tuple[Tokenizer, ChatTemplate]:
        if self.tokenizer is None:
            raise NoChatTemplateError("this bundle has no tokenizer: chat needs one, with a chat template")
        if self.tokenizer.chat_template is None:
            raise NoChatTemplateError("this bundle's tokenizer has no chat template: use generate with a prompt text")
        return self.tokenizer, self.tokenizer.chat_template

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[Any] | None = None, documents: Sequence[Any] | None = None,
                    template_variables: Mapping[str, Any] | None = None) -> str:
        """The prompt text the bundle's chat template renders for a conversation (a list of
        {"role", "content"} maps), as transformers' apply_chat_template(..., tokenize=False)."""
        return self._template()[1].render(messages, add_generation_prompt, tools, documents,
                                          **dict(template_variables or {}))

    def _chat_ids(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
                  tools: Sequence[Any] | None, documents: Sequence[Any] | None,
                  template_variables: Mapping[str, Any] | None) -> list[int]:
        tokenizer, _ = self._template()
        text = self.chat_prompt(messages, add_generation_prompt, tools, documents, template_variables)
        return tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens

    def chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 256, *,
             add_generation_prompt: bool = True, tools: Sequence[Any] | None = None,
             documents: Sequence[Any] | None = None, template_variables: Mapping[str, Any] | None = None,
             **sampling: Any) -> str:
        """The assistant's reply to a conversation: the chat template's prompt, then `generate`
        (sampling: its do_sample, temperature, top_k, top_p, seed, stop_at_eos)."""
        ids = self._chat_ids(messages, add_generation_prompt, tools, documents, template_variables)
        out = self.generate(ids, max_new_tokens=max_new_tokens, **sampling)
        return self._decode(out)

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], max_new_tokens: int = 256, *,
                    add_generation_prompt: bool = True, tools: Sequence[Any] | None = None,
                    documents: Sequence[Any] | None = None, template_variables: Mapping[str, Any] | None = None,
                    **sampling: Any) -> Iterator[str]:
        """`chat`, as text pieces as they are generated (joined: `chat`'s text)."""
        ids = self._chat_ids(messages, add_generation_prompt, tools, documents, template_variables)
        return self._stream(ids, max_new_tokens, **sampling)

    # -- streaming -----------------------------------------------------------------------------
    def stream_generate(self, prompt: str | Sequence[int], max_new_tokens: int = 64, **sampling: Any) -> Iterator[str]:
        """`generate` of one prompt (a text or token ids) as text pieces as they are generated;
        joined, they are generate's text. A piece never ends inside a multi-byte character."""
        first: object = None if isinstance(prompt, str) or len(prompt) == 0 else prompt[0]
        if first is not None and not hasattr(first, "__index__"):  # ints, numpy ints
            raise ValueError("stream_generate takes one prompt (a text or a list of token ids), not a batch")
        return self._stream(prompt, max_new_tokens, **sampling)

    def _stream(self, prompt: str | Sequence[int], max_new_tokens: int, do_sample: bool = False,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                stop_at_eos: bool = True) -> Iterator[str]:
        if self.tokenizer is None:
            raise ValueError("this bundle has no tokenizer: streaming text needs one")
        self._need_causal_lm()
        request = GenerationPrompt(prompt, self.tokenizer, self.pad_token_id)  # checked now, not at the first next()
        return self._pieces(request, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop_at_eos)

    def _pieces(self, request: GenerationPrompt, max_new_tokens: int, do_sample: bool, temperature: float,
                top_k: int, top_p: float, seed: int, stop_at_eos: bool) -> Iterator[str]:
        stream = TextStream(self._decode)
        eos = set(self.eos_token_ids)
        for tokens in self._token_steps(request, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                                        stop_at_eos):
            token = tokens[0]
            if token is not None and token not in eos:  # generate's text leaves EOS tokens out too
                piece = stream.push(token)
                if piece:
                    yield piece
        rest = stream.flush()
        if rest:
            yield rest

    def _decode(self, ids: Sequence[int]) -> str:
        assert self.tokenizer is not None  # callers checked
        eos = set(self.eos_token_ids)
        return self.tokenizer.decode([int(t) for t in ids if t not in eos])
