"""`mcq chat FILE`: a conversation with a bundle's chat model in the terminal, streamed as it is
generated. /reset starts over (keeping --system), /exit or Ctrl-D quits, Ctrl-C stops a reply."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

HELP = "/reset: start over   /exit (or Ctrl-D): quit   Ctrl-C: stop a reply"


def chat_loop(model: Any, context: int, max_new_tokens: int, system: str | None = None,
              read: Callable[[str], str] = input, out: TextIO = sys.stdout, **sampling: Any) -> None:
    """Read lines, answer each with the model's streamed reply, until /exit or end of input.
    A conversation grown past the context drops its oldest turns (said once per drop)."""
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    out.write(f"{HELP}\n")
    while True:
        try:
            line = read("> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n")
            return
        command = line.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            history = list(base)
            out.write("(conversation reset)\n")
            continue
        if command in ("/help", "/?"):
            out.write(f"{HELP}\n")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        history = _fit(model, history, len(base), context - max_new_tokens, out)
        if history is None:
            history = list(base)
            out.write("(that message alone is longer than the context allows; not sent)\n")
            continue
        reply = []
        try:
            for piece in model.stream_chat(history, max_new_tokens=max_new_tokens, **sampling):
                out.write(piece)
                out.flush()
                reply.append(piece)
        except KeyboardInterrupt:
            out.write(" [stopped]")
        out.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def _fit(model: Any, history: list[dict[str, str]], keep: int, budget: int, out: TextIO) -> list | None:
    """The history without its oldest turns until its prompt fits `budget` tokens (None: the last
    message alone does not)."""
    dropped = False
    while len(model._chat_ids(history, True, None, None, None)) > budget:
        if len(history) - keep <= 1:
            return None
        del history[keep : keep + 2]  # the oldest user message and the reply to it
        dropped = True
    if dropped:
        out.write("(the oldest turns were dropped: the conversation outgrew the context)\n")
    return history
