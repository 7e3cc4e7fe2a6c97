"""Serving SmolLM2-135M-Instruct (real weights, W8A8KV8; issue 26's done-when): the `openai` client
streams a chat reply equal to Model.chat, on the prompt transformers renders; `mcq chat` streams
its reply in a real terminal. Slow (the quantization: minutes; shared with test_smollm2_slow)."""
from __future__ import annotations

import pytest
from serving_helpers import chat_in_tmux, served

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

MESSAGES = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Name three things to pack for a day hike."}]


def test_the_openai_client_streams_the_reply_model_chat_gives(smollm2):
    import runtime

    _, tok, _, path = smollm2
    model = runtime.load(path)
    expected = model.chat(MESSAGES, max_new_tokens=48)
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert model.chat_prompt(MESSAGES) == rendered
    with served(path, "--model-name", "smollm2") as (url, _):
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        chunks = list(client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=48,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == expected and len(pieces) > 5
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


def test_mcq_chat_streams_in_a_terminal(smollm2):
    import runtime

    _, _, _, path = smollm2
    message = "Write two sentences about the sea."
    expected = runtime.load(path).chat([{"role": "user", "content": message}], max_new_tokens=64)
    screens = chat_in_tmux(path, message, expected, 64)
    # streamed: some screen showed part of the reply before all of it
    flat = " ".join(expected.split())
    partial = [s for s in screens if f"> {message}" in s]
    seen = [" ".join(s[s.index(f"> {message}") + len(message) + 2:].split()) for s in partial]
    assert any(0 < len(text) < len(flat) and flat.startswith(text) for text in seen), seen[-3:]
