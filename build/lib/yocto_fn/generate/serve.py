"""`cli.py serve`: an OpenAI-compatible HTTP server over one checkpoint, and a chat page.

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (with
`stream: true`, server-sent events ending `data: [DONE]`), `GET /healthz`, and `GET /`, a
static chat page that streams replies. The model runs on the main thread, which owns a
batched KV cache (`batcher.Batcher`); the HTTP server's event loop runs on a thread of its
own, where request handlers only queue jobs and relay their events, so the loop never waits
on the model.

A prompt longer than the context slides as `sample` slides it: the model reads its last
`block_size` tokens (`usage.prompt_tokens` still counts them all). A chat is laid out as
`cli.py chat` lays it out (`chat.prompt_ids`): oldest turns are dropped to leave room for
the reply, and the reply ends at a blank line or a turn marker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import orjson
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..config import ServeConfig
from ..core.params import tree_leaves
from ..errors import UserError
from ..formats import tokenizer as tokenizers
from . import chat
from .batcher import Batcher, Event, Job, QueueFull, Sampling, compiled_steps
from .sample import Loaded, encode_prompt, load_model
from .serve_api import (
    ApiError,
    ApiKey,
    BodyLimit,
    ChatRequest,
    CompletionRequest,
    Sampled,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    conversation,
    error_body,
    new_id,
    usage,
    validation_message,
)


class Service:
    """What the routes share: the loaded model, the batcher and the limits."""

    def __init__(self, opts: ServeConfig, loaded: Loaded, batcher: Batcher) -> None:
        self.opts, self.loaded, self.batcher = opts, loaded, batcher
        self.masks = chat.reply_masks(loaded.tok, loaded.params["wte"].device)
        self.started = int(time.time())
        self.mailbox: Mailbox | None = None  # made when serving starts, on its event loop
        dtypes = {leaf.dtype for leaf in tree_leaves(loaded.params)}
        wte = str(loaded.params["wte"].dtype).removeprefix("torch.")
        self.weights = "int8" if torch.int8 in dtypes else wte  # what is loaded, not the flag

    # ------------------------------------------------------------------ request checks

    def check(self, req: Sampled) -> int:
        """Server-side limits of a request; returns its max_tokens."""
        if req.model not in (None, "", self.opts.model_id):
            raise ApiError(404, f"model {req.model!r} is not served here; GET /v1/models "
                           f"lists {self.opts.model_id!r}", param="model",
                           code="model_not_found")  # fmt: skip
        if req.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        limit = self.opts.max_tokens_limit
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        max_tokens = max_tokens or self.opts.max_new_tokens
        if max_tokens > limit:
            raise ApiError(400, f"max_tokens is {max_tokens}; at most {limit} "
                           "(--max-tokens-limit)", param="max_tokens")  # fmt: skip
        return max_tokens

    def known_chars(self, text: str, param: str) -> None:
        tok = self.loaded.tok
        if isinstance(tok, tokenizers.CharTokenizer):
            missing = tok.unknown(text)
            if missing:
                shown = " ".join(repr(c) for c in missing[:10])
                raise ApiError(400, f"{param} has characters outside the model's vocabulary: "
                               f"{shown}; remove them", param=param)  # fmt: skip

    def sampling(self, req: Sampled, index: int) -> Sampling:
        """Request values over the server's defaults; choice i of a seeded request draws
        with seed + i, an unseeded one with a fresh random seed."""
        o = self.opts
        temperature = o.temperature if req.temperature is None else req.temperature
        top_k = o.top_k if req.top_k is None else req.top_k
        top_p = o.top_p if req.top_p is None else req.top_p
        seed = secrets.randbits(62) if req.seed is None else (req.seed + index) % 2**63
        return Sampling(temperature, top_k or None, top_p or None, seed)

    # ------------------------------------------------------------------ the two kinds

    def completion_prompts(self, req: CompletionRequest) -> list[tuple[str, list[int]]]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        for i, p in enumerate(prompts):
            self.known_chars(p, "prompt" if isinstance(req.prompt, str) else f"prompt.{i}")
        return [(p, encode_prompt(self.loaded, p, False)) for p in prompts]

    def chat_prompt(self, req: ChatRequest, max_tokens: int) -> list[int]:
        """The conversation as `cli.py chat` lays it out; the last message is the user's."""
        system, turns, user = conversation(req.messages, self.opts.system_prompt)
        for i, m in enumerate(req.messages):
            self.known_chars(" ".join(m.content.split()), f"messages.{i}.content")
        block = self.loaded.cfg.block_size
        budget = block - min(max_tokens, block // 2)
        return chat.prompt_ids(self.loaded.tok, system, turns, user, budget)

    def jobs(self, prompts: Sequence[list[int]], req: Sampled, max_tokens: int, *,
             chat_reply: bool, emit) -> list[Job]:  # fmt: skip
        """One job per choice: prompt p's choices are indices p * n ... p * n + n - 1."""
        total = len(prompts) * req.n
        if total > self.batcher.max_batch:
            raise ApiError(400, f"{total} choices asked (prompts x n); at most "
                           f"{self.batcher.max_batch} (--max-batch)", param="n")  # fmt: skip
        ends = tuple(req.stop) + (chat.REPLY_ENDS if chat_reply else ())
        out = []
        for p, ids in enumerate(prompts):
            for j in range(req.n):
                i = p * req.n + j
                out.append(Job(ids, max_tokens, self.sampling(req, i),
                               lambda ev, i=i: emit(i, ev), ends=ends, strip=chat_reply,
                               masks=self.masks if chat_reply else None))  # fmt: skip
        return out


# ---------------------------------------------------------------------------- the app


def build_app(service: Service):
    """The FastAPI app over `service`; its batcher's loop must run beside it (`run`), and
    stops when the app shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.mailbox = Mailbox()  # bound to the loop that serves
        o = service.opts
        print(f"serving {o.model_id} at http://{o.host}:{o.port} (chat page at /, API under "
              "/v1); Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)  # fmt: skip
        yield
        service.batcher.stop()

    app = FastAPI(title="yocto_fn", version="1", lifespan=lifespan)
    app.add_middleware(ApiKey, key=service.opts.api_key)
    app.add_middleware(BodyLimit, limit=service.opts.max_body_kb * 1024)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError):
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(error_body(message, "server_error"), status_code=500)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        b = service.batcher
        return {"status": "ok", "model": service.opts.model_id, "busy_rows": b.busy_rows(),
                "max_batch": b.max_batch, "waiting": b.waiting.qsize(),
                "decode_steps": b.decode_steps, "weights": service.weights}  # fmt: skip

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.opts.model_id, "object": "model",
                "created": service.started, "owned_by": "yocto_fn"}]}  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            resources.files("yocto_fn.generate").joinpath("static/chat.html").read_text()
        )

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        max_tokens = service.check(req)
        prompts = service.completion_prompts(req)
        rid, model = new_id("cmpl"), service.opts.model_id
        relay = Relay(service.mailbox, len(prompts) * req.n)
        jobs = service.jobs([ids for _, ids in prompts], req, max_tokens, chat_reply=False,
                            emit=relay.emit)  # fmt: skip
        echo = [text if req.echo else "" for text, _ in prompts for _ in range(req.n)]
        prompt_tokens = sum(len(ids) for _, ids in prompts)
        submit(service, jobs)
        if req.stream:

            def chunk(i: int, text: str, finish: str | None) -> dict:
                return completion_chunk(rid, model, i, text, finish)

            first = [chunk(i, t, None) for i, t in enumerate(echo) if t]
            return sse(relay.stream(jobs, chunk, first, _usage(req), prompt_tokens))
        texts, tokens = await relay.gather(jobs, request)
        texts = [(e + t, f) for e, (t, f) in zip(echo, texts, strict=True)]
        return completion(rid, model, texts, usage(prompt_tokens, tokens))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        max_tokens = service.check(req)
        ids = service.chat_prompt(req, max_tokens)
        rid, model = new_id("chatcmpl"), service.opts.model_id
        relay = Relay(service.mailbox, req.n)
        jobs = service.jobs([ids], req, max_tokens, chat_reply=True, emit=relay.emit)
        submit(service, jobs)
        if req.stream:

            def chunk(i: int, text: str, finish: str | None) -> dict:
                return chat_chunk(rid, model, i, {"content": text} if text else {}, finish)

            first = [chat_chunk(rid, model, i, {"role": "assistant", "content": ""}, None)
                     for i in range(req.n)]  # fmt: skip
            return sse(relay.stream(jobs, chunk, first, _usage(req), len(ids)))
        texts, tokens = await relay.gather(jobs, request)
        return chat_completion(rid, model, texts, usage(len(ids), tokens))

    def sse(batches: AsyncIterator[list[dict]]) -> StreamingResponse:
        async def body():
            async for batch in batches:
                yield b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in batch)
            yield b"data: [DONE]\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    return app


def _usage(req: Sampled) -> bool:
    options = getattr(req, "stream_options", None)
    return isinstance(options, dict) and bool(options.get("include_usage"))


def submit(service: Service, jobs: list[Job]) -> None:
    try:
        service.batcher.submit(jobs)
    except QueueFull as exc:
        raise ApiError(429, f"the server is busy ({exc}); retry shortly", "rate_limit_error",
                       code="queue_full") from None  # fmt: skip


class Mailbox:
    """Hands events from the worker thread to the event loop, waking the loop once for all
    the events posted until it runs (a decode step's, one per row) rather than once per
    event: each wake-up is a write to the loop's self-pipe and a turn of the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.items: collections.deque[tuple[asyncio.Queue, Any]] = collections.deque()
        self.lock, self.armed = threading.Lock(), False

    def post(self, queue: asyncio.Queue, item: Any) -> None:
        self.items.append((queue, item))
        with self.lock:
            if self.armed:
                return
            self.armed = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:  # disarm first: an item posted after this schedules the next delivery
            self.armed = False
        while self.items:
            queue, item = self.items.popleft()
            queue.put_nowait(item)


class Relay:
    """Carries a request's job events from the worker thread onto the event loop."""

    def __init__(self, mailbox: Mailbox, choices: int) -> None:
        self.mailbox, self.choices = mailbox, choices
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

    def emit(self, index: int, event: Event) -> None:
        self.mailbox.post(self.queue, (index, event))

    def _ready(self) -> list[tuple[int, Event]]:
        """The events already delivered, without waiting."""
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    async def gather(self, jobs: list[Job], request) -> tuple[list[tuple[str, str]], int]:
        """Every choice's (text, finish_reason) and the tokens generated; a client that
        leaves before the end cancels its jobs."""
        texts, finish, tokens = [""] * self.choices, [None] * self.choices, 0
        try:
            while any(f is None for f in finish):
                try:
                    i, ev = await asyncio.wait_for(self.queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise ApiError(499, "client disconnected") from None
                    continue
                if ev.finish == "error":
                    raise ApiError(500, ev.text, "server_error")
                texts[i] += ev.text
                if ev.finish:
                    finish[i], tokens = ev.finish, tokens + ev.tokens
        finally:
            for job in jobs:
                job.cancel()
        return list(zip(texts, finish, strict=True)), tokens

    async def stream(self, jobs, chunk, first: list[dict], with_usage: bool,
                     prompt_tokens: int) -> AsyncIterator[list[dict]]:  # fmt: skip
        """Chunks as the tokens come, in batches: every event already delivered goes out in
        one write (a client that reads slower than the model gets fewer, fuller writes).
        A job that fails ends the stream with an error object. Leaving early (a client
        that has gone) cancels the jobs."""
        left, tokens = self.choices, 0
        try:
            if first:
                yield first
            while left:
                batch = []
                for i, ev in [await self.queue.get(), *self._ready()]:
                    if ev.finish == "error":
                        yield [*batch, error_body(ev.text, "server_error")]
                        return
                    if ev.text:
                        batch.append(chunk(i, ev.text, None))
                    if ev.finish:
                        left, tokens = left - 1, tokens + ev.tokens
                        batch.append(chunk(i, "", ev.finish))
                if with_usage and not left:
                    batch.append({**chunk(0, "", None), "choices": [],
                                  "usage": usage(prompt_tokens, tokens)})  # fmt: skip
                if batch:
                    yield batch
        finally:
            for job in jobs:
                job.cancel()


# ---------------------------------------------------------------------------- the CLI side


def check_flags(opts: ServeConfig) -> None:
    for name in ("max_batch", "max_queue", "prefill_chunk", "max_tokens_limit", "max_body_kb"):
        if getattr(opts, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be at least 1 (got {getattr(opts, name)})")
    if not 0 <= opts.port <= 65535:
        raise UserError(f"--port must be in 0..65535 (got {opts.port})")
    if opts.grace_s < 0:
        raise UserError(f"--grace-s must be >= 0 (got {opts.grace_s})")
    if opts.api_key is not None and not opts.api_key.strip():
        raise UserError("--api-key is empty; give a key or leave the flag out")


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before loading anything (uvicorn would exit later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another "
                            "--port or --host") from None  # fmt: skip


def run(opts: ServeConfig) -> None:
    """Load the checkpoint, warm the decode step, and serve until SIGINT or SIGTERM."""
    check_flags(opts)
    check_port(opts.host, opts.port)
    loaded = load_model(opts)
    t0 = time.perf_counter()
    steps = None
    if opts.compile:
        beside = opts.ckpt if opts.ckpt.is_dir() else opts.ckpt.parent  # an exported directory
        steps = compiled_steps(loaded.model, loaded.params, loaded.cfg, opts.max_batch,
                               beside / "compiled")  # fmt: skip
    batcher = Batcher(
        loaded.model, loaded.params, loaded.cfg, loaded.tok, max_batch=opts.max_batch,
        max_queue=opts.max_queue, prefill_chunk=opts.prefill_chunk, steps=steps,
    )  # fmt: skip
    if opts.compile:
        batcher.warm_up()
        print(f"decode steps for batches of {', '.join(map(str, batcher.sizes))} rows ready in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    app = build_app(Service(opts, loaded, batcher))
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                            timeout_graceful_shutdown=opts.grace_s)  # fmt: skip
    server = uvicorn.Server(config)
    http = threading.Thread(target=server.run, name="http", daemon=True)

    def on_signal(signum: int, frame: Any) -> None:
        """SIGTERM or Ctrl-C: stop admitting and drain for up to --grace-s; a second
        Ctrl-C cuts the streams at once."""
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    # the model runs here, on the main thread (see `Batcher.run`), and the event loop on its
    # own; uvicorn leaves signals to the main thread when it runs on another
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        http.start()
        batcher.run(alive=http.is_alive)
        http.join(opts.grace_s + 10)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started:
        raise UserError(f"the HTTP server did not start on {opts.host}:{opts.port}; pick "
                        "another --port or --host")  # fmt: skip
    print("server stopped", file=sys.stderr, flush=True)
