"""The OpenAI API's request checking and response bodies, for `runtime.server` (no web framework
here: this module is plain data in, plain data out, and tested as such).

Requests are checked whole before anything runs: a bad value is an `ApiError` naming the
parameter, with the status and the JSON error body OpenAI's API gives (400 for a bad value or a
prompt longer than the context, 404 for an unknown model). Supported: /v1/chat/completions and
/v1/completions with max_tokens (max_completion_tokens), temperature (0: greedy), top_p, seed,
stop, n=1, stream and stream_options.include_usage; top_k, ignore_eos and chat_template_kwargs
as the extensions other servers (vLLM, llama.cpp) take. Parameters that would change the output
and that this server does not implement (penalties, logit_bias, logprobs, n > 1, a JSON response
format) are refused, not ignored."""
from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.scheduler import Sampling

MAX_STOP = 4  # stop sequences, as OpenAI allows
MAX_STOP_CHARS = 256
ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """A request the server refuses: HTTP `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    """A checked completion request: the prompt's token ids and how to continue it."""

    kind: str  # "chat" or "completion"
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


# -- checking ----------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_number(v) or not lo <= v <= hi or v != v:
        raise ApiError(400, f"{key}: expected a number in [{lo:g}, {hi:g}], got {v!r}", key)
    return float(v)


def _integer(body: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ApiError(400, f"{key}: expected an integer {bound}, got {v!r}", key)
    return v


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise ApiError(400, f"{key}: not supported by this server (only 0)", key)
    if body.get("logit_bias"):
        raise ApiError(400, "logit_bias: not supported by this server", "logit_bias")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise ApiError(400, "logprobs: not supported by this server", "logprobs")
    if body.get("n") not in (None, 1):
        raise ApiError(400, f"n: only 1 completion per request is supported, got {body.get('n')!r}", "n")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of: only 1 is supported", "best_of")
    if body.get("echo") not in (None, False):
        raise ApiError(400, "echo: not supported by this server", "echo")
    if body.get("suffix") not in (None, ""):
        raise ApiError(400, "suffix: not supported by this server", "suffix")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, Mapping) or fmt.get("type") != "text"):
        raise ApiError(400, "response_format: only {\"type\": \"text\"} is supported", "response_format")


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)):
        raise ApiError(400, f"stop: expected a string or a list of up to {MAX_STOP} non-empty strings "
                            f"(each up to {MAX_STOP_CHARS} characters)", "stop")
    return list(stops)


def _sampling(body: Mapping[str, Any]) -> Sampling:
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    top_k = _integer(body, "top_k", 0) or 0
    seed = _integer(body, "seed", 0, 2**63 - 1) or 0
    if temperature == 0.0:
        return Sampling(seed=seed)  # greedy, as OpenAI's temperature 0 means
    return Sampling(True, temperature, top_k, top_p, seed)


def check_common(body: Any, served: str) -> None:
    """What every completion body must be: an object naming the served model, with valid
    stream options and no unsupported parameter."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: required, the name of the served model (GET /v1/models)", "model")
    if model != served:
        raise ApiError(404, f"The model {model!r} does not exist; this server serves {served!r}", "model",
                       "model_not_found")
    for key in ("stream",):
        if body.get(key) not in (None, True, False):
            raise ApiError(400, f"{key}: expected true or false", key)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, Mapping)
                                or options.get("include_usage") not in (None, True, False)):
        raise ApiError(400, "stream_options: expected {\"include_usage\": true|false}", "stream_options")
    _refuse_unsupported(body)


def _budget(body: Mapping[str, Any], prompt_tokens: int, context: int, param: str) -> int:
    """max_tokens, defaulting to the rest of the context; 400 when the prompt (plus it) does not fit."""
    asked = _integer(body, "max_completion_tokens", 1)
    if asked is None:
        asked = _integer(body, "max_tokens", 1)
    if prompt_tokens >= context or (asked is not None and prompt_tokens + asked > context):
        wanted = prompt_tokens + (asked or 1)
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{wanted} tokens ({prompt_tokens} in the prompt, {asked or 1} for the completion). "
                            "Please reduce the length of the prompt or the completion.", param,
                       "context_length_exceeded")
    return asked if asked is not None else context - prompt_tokens


def _request(kind: str, body: Mapping[str, Any], ids: list[int], context: int) -> GenerationRequest:
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream"))
    budget = _budget(body, len(ids), context, "messages" if kind == "chat" else "prompt")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "ignore_eos: expected true or false", "ignore_eos")
    return GenerationRequest(kind, ids, budget, _sampling(body), _stop(body), stream,
                             stream and bool(options.get("include_usage")), ignore_eos)


def messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat messages with each content as text (parts of type text joined), or ApiError."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise ApiError(400, f"{where}: expected an object with a role in {', '.join(ROLES)}", where)
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                    "are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        elif content is not None and not isinstance(content, str):
            raise ApiError(400, f"{where}.content: expected a string or a list of text parts", f"{where}.content")
        out.append({**m, "content": content if content is not None else ""})
    return out


def chat_request(body: Any, served: str, render: Any, encode: Any, context: int) -> GenerationRequest:
    """A /v1/chat/completions body checked: `render(messages, add_generation_prompt, tools,
    variables)` gives the prompt text (the chat template), `encode(text)` its ids."""
    check_common(body, served)
    messages = messages_of(body)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError(400, "tools: expected a list", "tools")
    variables = body.get("chat_template_kwargs") or {}
    if not isinstance(variables, Mapping):
        raise ApiError(400, "chat_template_kwargs: expected an object", "chat_template_kwargs")
    add = body.get("add_generation_prompt", True)
    if not isinstance(add, bool):
        raise ApiError(400, "add_generation_prompt: expected true or false", "add_generation_prompt")
    try:
        text = render(messages, add, tools, dict(variables))
    except ValueError as e:  # the template refused the conversation (raise_exception, bounds)
        raise ApiError(400, f"messages: the model's chat template cannot render them: {e}", "messages") from None
    return _request("chat", body, encode(text), context)


def completion_request(body: Any, served: str, encode: Any, vocab: int, context: int) -> GenerationRequest:
    """A /v1/completions body checked: the prompt is a string, a list of one string, or token ids."""
    check_common(body, served)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        ids = encode(prompt)
    elif (isinstance(prompt, list) and prompt
          and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in prompt)):
        ids = list(prompt)
    else:
        raise ApiError(400, f"prompt: expected a non-empty string or a list of token ids in [0, {vocab}) "
                            "(one prompt per request)", "prompt")
    if not ids:
        raise ApiError(400, "prompt: it has no tokens", "prompt")
    return _request("completion", body, ids, context)


# -- responses ---------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _head(req: GenerationRequest, served: str, chunk: bool) -> dict[str, Any]:
    if req.kind == "chat":
        return {"id": f"chatcmpl-{req.id}", "object": "chat.completion.chunk" if chunk else "chat.completion",
                "created": req.created, "model": served, "system_fingerprint": None}
    return {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": served,
            "system_fingerprint": None}


def response(req: GenerationRequest, served: str, text: str, finish_reason: str,
             completion_tokens: int) -> dict[str, Any]:
    """The whole (non-streamed) response."""
    if req.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                  "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {**_head(req, served, False), "choices": [choice], "usage": usage(len(req.prompt_ids), completion_tokens)}


def chunk(req: GenerationRequest, served: str, text: str | None, finish_reason: str | None = None,
          first: bool = False) -> dict[str, Any]:
    """One server-sent event of a streamed response: new text, or (text None) the finish reason."""
    if req.kind == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    out = {**_head(req, served, True), "choices": [choice]}
    if req.include_usage:
        out["usage"] = None  # as OpenAI: null on every chunk but the last
    return out


def usage_chunk(req: GenerationRequest, served: str, completion_tokens: int) -> dict[str, Any]:
    """The last event with stream_options.include_usage: no choices, the counts."""
    return {**_head(req, served, True), "choices": [], "usage": usage(len(req.prompt_ids), completion_tokens)}


def models(served: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(served, created)]}


def model_card(served: str, created: int) -> dict[str, Any]:
    return {"id": served, "object": "model", "created": created, "owned_by": "mcq"}


class StopText:
    """Text pieces with stop sequences cut out: hands out text as soon as no stop sequence can
    begin in it, and says when one was found (the text before it is the last handed out)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self._held, self.stopped = stops, "", False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped, self._held = True, ""
            return text[: min(found)]
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held
