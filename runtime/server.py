"""An OpenAI-compatible HTTP server for a causal-LM bundle (`mcq serve FILE`; issue 26).

Endpoints: POST /v1/chat/completions and /v1/completions (streamed as server-sent events with
`stream: true`), GET /v1/models, /v1/models/{id} and /health. One `Scheduler` owns the model and
batches every running request's decode steps (continuous batching); a request whose client goes
away is cancelled and leaves the batch at the next step; when `max_queue` requests already wait,
the next gets 503. Every error is OpenAI's JSON error body with a 4xx/5xx status, never a
traceback.

Built on Starlette and uvicorn, the optional extra `mcq[serve]`: the runtime itself does not
depend on them (imported here only)."""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from runtime import openai_api as api
from runtime.scheduler import CANCELLED, ERROR, LENGTH, Job, QueueFullError, Scheduler, SchedulerClosedError
from runtime.streaming import TextStream

MAX_BODY_BYTES = 4 * 2**20  # a request body larger than this is refused (413)
DEFAULT_CONTEXT = 2048  # when the bundle's model config names no max_position_embeddings


class MissingServeExtraError(ImportError):
    """starlette or uvicorn (the `serve` extra) is not installed."""


def _require() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingServeExtraError(f"serving needs the 'serve' extra ({e.name} is missing): "
                                     "pip install 'mcq[serve]'") from None


def context_length(model: Any) -> int:
    """Prompt plus completion tokens a request may use: the model config's max_position_embeddings."""
    config = ((model.manifest or {}).get("model") or {}).get("config") or {}
    n = config.get("max_position_embeddings") or config.get("n_positions")
    return int(n) if isinstance(n, int) and n > 0 else DEFAULT_CONTEXT


def vocab_size(model: Any) -> int:
    config = ((model.manifest or {}).get("model") or {}).get("config") or {}
    n = config.get("vocab_size")
    if isinstance(n, int) and n > 0:
        return n
    return int(model.tokenizer._tok.get_vocab_size(with_added_tokens=True))


class _Inbox:
    """Items from the scheduler's thread into the event loop's queues, one wake-up of the loop for
    all that arrived meanwhile (a decode step's tokens for every request: one, not one each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.lock, self.waking = loop, threading.Lock(), False
        self.items: collections.deque[tuple[asyncio.Queue[tuple[str, Any]], tuple[str, Any]]] = collections.deque()

    def put(self, queue: asyncio.Queue[tuple[str, Any]], item: tuple[str, Any]) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.waking:
                return
            self.waking = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.waking = self.items, False
            self.items = collections.deque()
        for queue, item in items:
            queue.put_nowait(item)


class _Run:
    """One request's job, its tokens as text (stop sequences cut), fed from the scheduler's thread
    into this event loop."""

    def __init__(self, req: api.GenerationRequest, model: Any, inbox: _Inbox) -> None:
        self.req = req
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_token(token: int) -> None:
            inbox.put(self.queue, ("token", token))

        def on_done(reason: str, error: BaseException | None) -> None:
            inbox.put(self.queue, ("done", (reason, error)))

        self.job = Job(req.prompt_ids, req.max_tokens, req.sampling, on_token, on_done, not req.ignore_eos)
        self.text = TextStream(model._decode)
        self.stops = api.StopText(req.stop)
        self.tokens = 0

    async def pieces(self) -> AsyncIterator[tuple[str, str | None]]:
        """(text, None) pieces as tokens come, then ("", finish_reason); ApiError on a failure."""
        while True:
            kind, value = await self.queue.get()
            if kind == "token":
                self.tokens += 1
                piece = self.stops.push(self.text.push(value))
                if piece:
                    yield piece, None
                if self.stops.stopped:
                    self.job.cancel()
                    yield "", "stop"
                    return
                continue
            reason, error = value
            if reason == ERROR:
                raise api.ApiError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")
            if reason == CANCELLED:
                raise api.ApiError(503, "the request was cancelled (the server is shutting down)", type="server_error")
            rest = self.stops.push(self.text.flush()) + self.stops.flush()
            if rest:
                yield rest, None
            yield "", "length" if reason == LENGTH else "stop"
            return


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def create_app(model: Any, name: str, max_batch: int = 8, max_queue: int = 64, context: int | None = None) -> Any:
    """The Starlette application serving `model` (from `runtime.load`) under the model id `name`."""
    _require()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if model.tokenizer is None:
        raise ValueError("this bundle has no tokenizer: the OpenAI API answers in text, which needs one")
    context = context or context_length(model)
    vocab = vocab_size(model)
    created = int(time.time())
    state: dict[str, Any] = {}

    def error(e: api.ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    async def body_of(request: Request) -> Any:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            raise api.ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > MAX_BODY_BYTES:
                raise api.ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise api.ApiError(400, f"the request body is not valid JSON ({e})") from None

    def render(messages: list[dict[str, Any]], add: bool, tools: Any, variables: dict[str, Any]) -> str:
        return str(model.chat_prompt(messages, add_generation_prompt=add, tools=tools, template_variables=variables))

    def parse_chat(body: Any) -> api.GenerationRequest:
        if model.tokenizer.chat_template is None:
            api.check_common(body, name)  # a malformed body or another model's name says so first
            api.messages_of(body)
            raise api.ApiError(400, "this model has no chat template: use /v1/completions with a prompt")
        return api.chat_request(body, name, render, lambda t: model.tokenizer.encode(t, add_special_tokens=False),
                                context)

    def parse_completion(body: Any) -> api.GenerationRequest:
        return api.completion_request(body, name, model.tokenizer.encode, vocab, context)

    async def generation(request: Request, parse: Callable[[Any], api.GenerationRequest]) -> Any:
        try:
            body = await body_of(request)
            # the template and the tokenizer run off the event loop (a template has a time bound)
            req = await run_in_threadpool(parse, body)
            run = _Run(req, model, state["inbox"])
            try:
                state["scheduler"].submit(run.job)
            except QueueFullError as e:
                raise api.ApiError(503, f"the server is busy ({e}); retry later", type="server_error",
                                   code="server_busy") from None
            except SchedulerClosedError:
                raise api.ApiError(503, "the server is shutting down", type="server_error") from None
        except api.ApiError as e:
            return error(e)
        if req.stream:
            return _EventStream(_events(run, name), run.job.cancel)
        return await _whole(request, run, name, error)

    async def chat(request: Request) -> Any:
        return await generation(request, parse_chat)

    async def completions(request: Request) -> Any:
        return await generation(request, parse_completion)

    async def list_models(request: Request) -> Response:
        return JSONResponse(api.models(name, created))

    async def get_model(request: Request) -> Response:
        if request.path_params["model"] != name:
            return error(api.ApiError(404, f"The model {request.path_params['model']!r} does not exist", "model",
                                      "model_not_found"))
        return JSONResponse(api.model_card(name, created))

    async def health(request: Request) -> Response:
        s = state.get("scheduler")
        return JSONResponse({"status": "ok", "model": name, "active": s.active if s else 0,
                             "queued": s.queued if s else 0, "steps": s.steps if s else 0})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on "
                   f"{request.url.path}"}.get(status, getattr(exc, "detail", "error"))
        return error(api.ApiError(status, str(message), type="invalid_request_error"))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error(api.ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    def lifespan(app: Any) -> Any:
        import contextlib

        @contextlib.asynccontextmanager
        async def span() -> AsyncIterator[None]:
            state["scheduler"] = Scheduler(model, max_batch=max_batch, max_queue=max_queue)
            state["inbox"] = _Inbox(asyncio.get_running_loop())
            try:
                yield
            finally:
                state["scheduler"].close()

        return span()

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", list_models, methods=["GET"]),
              Route("/v1/models/{model:path}", get_model, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


async def _events(run: _Run, name: str) -> AsyncIterator[bytes]:
    req = run.req
    if req.kind == "chat":
        yield _sse(api.chunk(req, name, "", first=True))  # as OpenAI's first chunk: the role
    try:
        async for text, finish in run.pieces():
            if finish is None:
                yield _sse(api.chunk(req, name, text))
            else:
                yield _sse(api.chunk(req, name, None, finish))
        if req.include_usage:
            yield _sse(api.usage_chunk(req, name, run.tokens))
    except api.ApiError as e:
        yield _sse(e.body())
    yield b"data: [DONE]\n\n"


async def _whole(request: Any, run: _Run, name: str, error: Callable[[api.ApiError], Any]) -> Any:
    """Wait for the whole text, cancelling the job if the client goes away meanwhile."""
    from starlette.responses import JSONResponse

    async def collect() -> tuple[str, str]:
        parts, finish = [], "stop"
        async for text, reason in run.pieces():
            parts.append(text)
            finish = reason or finish
        return "".join(parts), finish

    work = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            run.job.cancel()
            work.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
    if work.cancelled():
        return JSONResponse({}, status_code=499)  # nobody reads it
    try:
        text, finish = work.result()
    except api.ApiError as e:
        return error(e)
    return JSONResponse(api.response(run.req, name, text, finish, run.tokens))


async def _disconnected(receive: Callable[[], Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _EventStream:
    """A text/event-stream response that cancels its job when the client goes away (listening
    for the disconnect while it streams) or when it ends, whichever comes first."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self.events, self.on_close = events, on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for event in self.events:
                if event:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        stream = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.on_close()
            for task in (stream, gone):
                task.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()


def serve(model: Any, name: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_queue: int = 64, context: int | None = None, log_level: str = "info",
          ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: requests in flight are cancelled)."""
    _require()
    import uvicorn

    app = create_app(model, name, max_batch, max_queue, context)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if ready is not None:
        startup = server.startup

        async def announce(sockets: Any = None) -> None:
            await startup(sockets)
            for s in server.servers:
                for sock in s.sockets:
                    h, p = sock.getsockname()[:2]
                    ready(f"http://{h}:{p}/v1")

        server.startup = announce  # type: ignore[method-assign]  # print the bound port (port 0 picks one)
    server.run()
