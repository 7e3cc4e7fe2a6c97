"""Serving (issue 26): continuous batching (runtime.scheduler), the OpenAI API's checks and bodies
(runtime.openai_api) and the server (`mcq serve`) driven by the real `openai` client."""
from __future__ import annotations

import json
import threading
import time

import pytest
from serving_helpers import chat_in_tmux, served

from runtime import openai_api as api
from runtime.scheduler import CANCELLED, LENGTH, STOP, Job, QueueFullError, Sampling, Scheduler

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

MESSAGES = [{"role": "user", "content": "Tell me about the sea ✓"}]
PROMPTS = ["The capital of France is", "Hello", "a b c d e f g h i j k l m n o p q r s t", "x",
           "Once upon a time there", "Write a poem about the sea"]
SAMPLINGS = [Sampling(), Sampling(True, 0.8, 0, 0.9, 3), Sampling(), Sampling(True, 1.0, 20, 1.0, 1),
             Sampling(), Sampling()]
LENGTHS = [20, 33, 9, 25, 40, 3]


@pytest.fixture(scope="module")
def chat_path(tiny_models, tmp_path_factory):
    from test_chat import TEMPLATE

    import mcq
    from mcq.examples import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    path = tmp_path_factory.mktemp("serve") / "tinychat.mcq"
    mcq.quantize(tiny_models("llama-tiny"), mcq.preset("W8A8KV8"), tokenizer=tok, progress=False).save(path)
    return path


class Collector:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.done = threading.Event()

    def job(self, ids, n, sampling=None, stop_at_eos=False) -> Job:
        def on_done(reason, error):
            self.reason = reason
            self.done.set()
        return Job(ids, n, sampling or Sampling(), self.tokens.append, on_done, stop_at_eos=stop_at_eos)


# ------------------------------------------------------------------------ the scheduler
@pytest.mark.parametrize("engine", ["native", "reference"])
def test_batched_jobs_get_the_tokens_generate_gives_each_alone(chat_path, engine):
    import runtime

    model = runtime.load(chat_path, engine=engine)
    ids = [model.tokenizer.encode(p) for p in PROMPTS]
    expected = [model.generate(i, max_new_tokens=n, do_sample=s.do_sample, temperature=s.temperature, top_k=s.top_k,
                               top_p=s.top_p, seed=s.seed, stop_at_eos=False)
                for i, s, n in zip(ids, SAMPLINGS, LENGTHS)]
    scheduler = Scheduler(model, max_batch=4, max_queue=10)
    try:
        collectors = [Collector() for _ in ids]
        for k, (c, i, s, n) in enumerate(zip(collectors, ids, SAMPLINGS, LENGTHS)):
            scheduler.submit(c.job(i, n, s))  # staggered: jobs join a batch already running
            time.sleep(0.002 * k)
        for c in collectors:
            assert c.done.wait(60)
        assert [c.tokens for c in collectors] == expected
        assert [c.reason for c in collectors] == [LENGTH] * len(ids)
        # 6 jobs of up to 40 tokens, at most 4 at a time: far fewer steps than one job after another
        assert scheduler.steps < sum(LENGTHS) - len(LENGTHS)
        assert (scheduler.active, scheduler.queued, scheduler.completed) == (0, 0, len(ids))
    finally:
        scheduler.close()


def test_a_cancelled_job_leaves_the_batch_at_the_next_step_and_the_rest_go_on(chat_path):
    import runtime

    model = runtime.load(chat_path)
    ids = model.tokenizer.encode(PROMPTS[0])
    scheduler = Scheduler(model, max_batch=2, max_queue=2)
    try:
        long, short = Collector(), Collector()
        long_job = long.job(ids, 200)
        scheduler.submit(long_job)
        scheduler.submit(short.job(ids, 30))
        while len(long.tokens) < 5:
            time.sleep(0.001)
        long_job.cancel()
        assert long.done.wait(10) and long.reason == CANCELLED
        assert len(long.tokens) < 200
        assert short.done.wait(30) and short.reason == LENGTH
        assert short.tokens == model.generate(ids, max_new_tokens=30, stop_at_eos=False)
        assert scheduler.active == 0
    finally:
        scheduler.close()


def test_eos_ends_a_job_with_stop_and_is_not_handed_out(chat_path):
    import runtime

    model = runtime.load(chat_path)
    ids = model.tokenizer.encode(PROMPTS[1])
    free = model.generate(ids, max_new_tokens=20, stop_at_eos=False)
    model.eos_token_ids = [free[4]]  # the 5th greedy token now ends the reply
    scheduler = Scheduler(model)
    try:
        c = Collector()
        scheduler.submit(c.job(ids, 20, stop_at_eos=True))
        assert c.done.wait(10)
        assert (c.reason, c.tokens) == (STOP, free[: free.index(free[4])])
    finally:
        scheduler.close()


def test_a_full_queue_refuses_and_close_cancels_what_waits(chat_path):
    import runtime

    model = runtime.load(chat_path)
    scheduler = Scheduler(model, max_batch=1, max_queue=1)
    ids = model.tokenizer.encode(PROMPTS[0])
    running, waiting = Collector(), Collector()
    scheduler.submit(running.job(ids, 10_000))
    while scheduler.queued:  # the first job moves into the batch
        time.sleep(0.001)
    scheduler.submit(waiting.job(ids, 5))
    with pytest.raises(QueueFullError, match="waiting"):
        scheduler.submit(Collector().job(ids, 5))
    scheduler.close()
    assert running.done.is_set() and waiting.done.is_set()
    assert (running.reason, waiting.reason) == (CANCELLED, CANCELLED)


# ------------------------------------------------------------------------ request checks
def _chat(**extra):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def _parse_chat(body, context=64):
    return api.chat_request(body, "m", lambda m, add, tools, v: "|".join(x["content"] for x in m),
                            lambda t: list(range(len(t))), context)


@pytest.mark.parametrize("body, status, param", [
    ([1, 2], 400, None),
    ({"messages": []}, 400, "model"),
    (_chat(model="other"), 404, "model"),
    ({"model": "m", "messages": []}, 400, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
    (_chat(temperature=2.5), 400, "temperature"),
    (_chat(temperature="hot"), 400, "temperature"),
    (_chat(top_p=1.5), 400, "top_p"),
    (_chat(max_tokens=0), 400, "max_tokens"),
    (_chat(max_tokens=True), 400, "max_tokens"),
    (_chat(max_completion_tokens=-1), 400, "max_completion_tokens"),
    (_chat(seed=-1), 400, "seed"),
    (_chat(n=2), 400, "n"),
    (_chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (_chat(stop=[""]), 400, "stop"),
    (_chat(stream="yes"), 400, "stream"),
    (_chat(frequency_penalty=0.5), 400, "frequency_penalty"),
    (_chat(logprobs=True), 400, "logprobs"),
    (_chat(response_format={"type": "json_object"}), 400, "response_format"),
    (_chat(max_tokens=63), 400, "messages"),  # 2 prompt tokens + 63 > 64
])
def test_a_bad_chat_request_is_an_api_error_naming_the_parameter(body, status, param):
    with pytest.raises(api.ApiError) as e:
        _parse_chat(body)
    assert (e.value.status, e.value.param) == (status, param)
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_a_good_chat_request_is_checked_into_its_generation_settings():
    req = _parse_chat(_chat(max_tokens=5, temperature=0, stop="\n", seed=7, stream=True,
                            stream_options={"include_usage": True},
                            messages=[{"role": "user", "content": [{"type": "text", "text": "ab"},
                                                                   {"type": "text", "text": "c"}]}]))
    assert (req.prompt_ids, req.max_tokens, req.sampling, req.stop) == ([0, 1, 2], 5, Sampling(seed=7), ["\n"])
    assert req.stream and req.include_usage
    req = _parse_chat(_chat(temperature=0.5, top_p=0.9, top_k=4))
    assert req.sampling == Sampling(True, 0.5, 4, 0.9, 0) and req.max_tokens == 62  # default: the rest
    with pytest.raises(api.ApiError, match="context length is 64") as e:
        _parse_chat(_chat(messages=[{"role": "user", "content": "x" * 64}]))
    assert e.value.code == "context_length_exceeded"


def test_completion_prompts_are_text_or_token_ids_in_the_vocabulary():
    def parse(prompt):
        return api.completion_request({"model": "m", "prompt": prompt}, "m", lambda t: [7] * len(t), 100, 64)

    assert parse("abc").prompt_ids == [7, 7, 7]
    assert parse([3, 4]).prompt_ids == [3, 4]
    assert parse(["ab"]).prompt_ids == [7, 7]
    for bad in ("", [], [100], [-1], [True], ["a", "b"], None, 3):
        with pytest.raises(api.ApiError, match="prompt"):
            parse(bad)


@pytest.mark.parametrize("pieces, stops, out, stopped", [
    (["Hello", " wor", "ld"], ["world"], "Hello ", True),
    (["ab", "c\n", "d"], ["\n"], "abc", True),
    (["a<", "b", ">c"], ["<|end|>"], "a<b>c", False),
    (["x<|e", "nd|>y"], ["<|end|>", "zz"], "x", True),
    (["one", "two"], [], "onetwo", False),
])
def test_stop_text_cuts_at_the_first_stop_sequence_across_pieces(pieces, stops, out, stopped):
    s = api.StopText(stops)
    got = "".join(s.push(p) for p in pieces) + s.flush()
    assert (got, s.stopped) == (out, stopped)


# ------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server(chat_path):
    # a context far past the tiny model's 256 positions: a long request stays in the batch for seconds
    with served(chat_path, "--max-batch", "4", "--max-queue", "4", "--context-length", "30000") as (url, proc):
        yield url, proc


def _client(url):
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0)


def test_the_openai_client_streams_a_chat_reply_equal_to_model_chat(server, chat_path):
    import runtime

    url, _ = server
    model = runtime.load(chat_path)
    expected = model.chat(MESSAGES, max_new_tokens=24)
    client = _client(url)
    assert [m.id for m in client.models.list().data] == ["tinychat"]
    whole = client.chat.completions.create(model="tinychat", messages=MESSAGES, max_tokens=24, temperature=0)
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "length"
    prompt_ids = model.tokenizer.encode(model.chat_prompt(MESSAGES), add_special_tokens=False)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt_ids), 24)
    stream = client.chat.completions.create(model="tinychat", messages=MESSAGES, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_completions_sampling_and_stop_sequences(server, chat_path):
    import runtime

    url, _ = server
    model = runtime.load(chat_path)
    client = _client(url)
    expected = model.generate(PROMPTS[0], max_new_tokens=16, do_sample=True, temperature=0.7, top_p=0.9, seed=5)
    got = client.completions.create(model="tinychat", prompt=PROMPTS[0], max_tokens=16, temperature=0.7,
                                    top_p=0.9, seed=5)
    assert got.choices[0].text == expected
    ids = client.completions.create(model="tinychat", prompt=[5, 6, 7], max_tokens=8, temperature=0)
    assert ids.choices[0].text == model.tokenizer.decode(model.generate([5, 6, 7], max_new_tokens=8))
    stop = expected[3:6]
    cut = client.completions.create(model="tinychat", prompt=PROMPTS[0], max_tokens=16, temperature=0.7,
                                    top_p=0.9, seed=5, stop=[stop])
    assert cut.choices[0].text == expected[: expected.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_error_bodies_with_4xx(server):
    url, _ = server
    client = _client(url)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tinychat", messages=MESSAGES, max_tokens=10**6)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tinychat", messages=MESSAGES, temperature=-1)
    for path, content, status in (("/v1/chat/completions", b"{not json", 400),
                                  ("/v1/chat/completions", b"\xff\xfe", 400),
                                  ("/v1/completions", json.dumps({"model": "tinychat", "prompt": [10**9]}), 400),
                                  ("/v1/chat/completions", b"x" * (5 * 2**20), 413),
                                  ("/v1/nothing", b"{}", 404)):
        r = httpx.post(url.removesuffix("/v1") + path, content=content, timeout=30)
        assert r.status_code == status, (path, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in r.text
    r = httpx.get(url + "/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_a_client_that_goes_away_frees_its_place(server):
    url, _ = server
    base = url.removesuffix("/v1")
    body = {"model": "tinychat", "messages": MESSAGES, "max_tokens": 20000, "stream": True, "temperature": 0,
            "ignore_eos": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/chat/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            assert next(lines) == "" and next(lines).startswith("data: ")  # a token came: the job runs
            assert http.get(base + "/health").json()["active"] == 1
        # closed after one event: the job is cancelled at the next step
        deadline = time.monotonic() + 10
        while http.get(base + "/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get(base + "/health").json() | {"steps": 0} == {"status": "ok", "model": "tinychat",
                                                                      "active": 0, "queued": 0, "steps": 0}


def test_a_full_server_answers_503(chat_path):
    # a context far past the tiny model's 256 positions: its one place stays taken for seconds
    with served(chat_path, "--max-batch", "1", "--max-queue", "0", "--context-length", "30000") as (url, _):
        body = {"model": "tinychat", "prompt": "x", "max_tokens": 20000, "stream": True, "temperature": 0,
                "ignore_eos": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", url + "/completions", json=body) as r:
                lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
                assert next(lines).startswith("data: ")
                deadline = time.monotonic() + 10
                while http.get(url.removesuffix("/v1") + "/health").json()["active"] != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                busy = http.post(url + "/completions", json={**body, "stream": False})
                assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy"
                assert busy.headers["retry-after"] == "1"


# ------------------------------------------------------------------------ mcq chat, in a real terminal
def test_mcq_chat_in_a_terminal_answers_resets_and_exits(chat_path):
    import runtime

    message = "Hello there"
    expected = runtime.load(chat_path).chat([{"role": "user", "content": message}], max_new_tokens=12)
    chat_in_tmux(chat_path, message, expected, 12)


def test_mcq_chat_and_serve_refuse_what_they_cannot_run_with_one_line(quantized, tmp_path):
    from click.testing import CliRunner

    from mcq.cli import main

    _, _, plain = quantized("llama-tiny")  # no tokenizer, no chat template
    runner = CliRunner()
    for args, fragment in ((["chat", str(plain)], "no tokenizer"), (["serve", str(plain)], "no tokenizer"),
                           (["serve", str(tmp_path / "missing.mcq")], "no such file"),
                           (["serve", str(tmp_path)], "is a directory")):
        result = runner.invoke(main, args, input="/exit\n")
        assert result.exit_code == 1, (args, result.output)
        assert fragment in result.output and "Traceback" not in result.output


def test_a_bundle_without_a_chat_template_serves_completions_and_says_why_chat_fails(quantized, tmp_path):
    import mcq
    from mcq.examples import tiny_tokenizer

    model, _, _ = quantized("llama-tiny")
    path = tmp_path / "no-template.mcq"
    mcq.quantize(model, mcq.preset("W8A8KV8"), tokenizer=tiny_tokenizer(), progress=False).save(path)
    with served(path, "--model-name", "plain") as (url, _):
        r = httpx.post(url + "/chat/completions", json={"model": "plain", "messages": MESSAGES})
        assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
        r = httpx.post(url + "/chat/completions", json={"model": "other", "messages": MESSAGES})
        assert r.status_code == 404
        r = httpx.post(url + "/completions", json={"model": "plain", "prompt": [5, 6, 7], "max_tokens": 4,
                                                   "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4


def test_a_failing_group_prefill_is_retried_alone_and_ends_only_the_failing_job(chat_path):
    import runtime

    model = runtime.load(chat_path)
    ids = [model.tokenizer.encode(p) for p in PROMPTS[:4]]
    expected = [model.generate(i, max_new_tokens=6, stop_at_eos=False) for i in ids]
    prefill = model.prefill
    bad = ids[1]  # "Hello": prefilled in one group with "x" and "The capital of France is"

    def failing(input_ids, *args, **kwargs):  # the group fails, and the prompt `bad` alone
        if any(list(row[-len(bad):]) == bad for row in input_ids):
            raise ValueError("boom")
        return prefill(input_ids, *args, **kwargs)

    model.prefill = failing
    scheduler = Scheduler(model, max_batch=8, max_queue=8)
    try:
        collectors = [Collector() for _ in ids]
        with scheduler._cond:  # all four wait when the thread next looks: they join together
            for c, i in zip(collectors, ids):
                scheduler.submit(c.job(i, 6))
        for c in collectors:
            assert c.done.wait(30)
        assert [c.reason for c in collectors] == [LENGTH, "error", LENGTH, LENGTH]
        assert [c.tokens for k, c in enumerate(collectors) if k != 1] == [e for k, e in enumerate(expected) if k != 1]
    finally:
        scheduler.close()
