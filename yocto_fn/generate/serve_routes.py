"""The HTTP side of `serve`: the FastAPI app, its routes and its error replies.

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (with
`stream: true`, server-sent events ending `data: [DONE]`), `GET /healthz`, and `GET /`, a
static chat page that streams replies. A route checks its request, queues one job per
choice and relays the jobs' events (`serve_bridge.Relay`); it never runs the model. Every
error, the app's own included, is an OpenAI-style JSON body.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import UserError
from .serve_api import (
    ApiError,
    ApiKey,
    BodyLimit,
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    error_body,
    new_id,
    usage,
    validation_message,
)
from .serve_bridge import Mailbox, Relay
from .serve_requests import Service, wants_usage

router = APIRouter()


def build_app(service: Service) -> FastAPI:
    """The FastAPI app over `service`; its batcher's loop must run beside it (`serve.run`),
    and stops when the app shuts down."""
    app = FastAPI(title="yocto_fn", version="1", lifespan=_lifespan)
    app.state.service = service
    app.add_middleware(ApiKey, key=service.opts.api_key)
    app.add_middleware(BodyLimit, limit=service.opts.max_body_kb * 1024)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    service.mailbox = Mailbox()  # bound to the loop that serves
    o = service.opts
    print(f"serving {o.model_id} at http://{o.host}:{o.port} (chat page at /, API under /v1); "
          "Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)  # fmt: skip
    yield
    service.batcher.stop()


def _service(request: Request) -> Service:
    return request.app.state.service


Served = Annotated[Service, Depends(_service)]


# ---------------------------------------------------------------------------- errors


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = validation_message(exc.errors())
    return JSONResponse(error_body(message, param=param), status_code=400)


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)


async def _user_error(request: Request, exc: UserError) -> JSONResponse:
    return JSONResponse(error_body(str(exc)), status_code=400)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    message = f"internal error: {type(exc).__name__}: {exc}"
    return JSONResponse(error_body(message, "server_error"), status_code=500)


# ---------------------------------------------------------------------------- routes


@router.get("/healthz")
async def healthz(service: Served) -> dict[str, Any]:
    b = service.batcher
    return {"status": "ok", "model": service.opts.model_id, "busy_rows": b.busy_rows(),
            "max_batch": b.max_batch, "waiting": b.waiting.qsize(),
            "decode_steps": b.decode_steps, "weights": service.weights}  # fmt: skip


@router.get("/v1/models")
async def list_models(service: Served) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": service.opts.model_id, "object": "model",
            "created": service.started, "owned_by": "yocto_fn"}]}  # fmt: skip


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(
        resources.files("yocto_fn.generate").joinpath("static/chat.html").read_text()
    )


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request, service: Served):
    """Each prompt's `n` choices; with `echo`, each choice's text starts with its prompt."""
    max_tokens = service.check(req)
    prompts = service.completion_prompts(req)
    rid, model = new_id("cmpl"), service.opts.model_id
    relay = Relay(service.mailbox, len(prompts) * req.n)
    jobs = service.jobs([ids for _, ids in prompts], req, max_tokens, chat_reply=False,
                        emit=relay.emit)  # fmt: skip
    echo = [text if req.echo else "" for text, _ in prompts for _ in range(req.n)]
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    service.submit(jobs)
    if req.stream:
        chunk = functools.partial(completion_chunk, rid, model)
        first = [chunk(i, text, None) for i, text in enumerate(echo) if text]
        return _sse(relay.stream(jobs, chunk, first, wants_usage(req), prompt_tokens))
    texts, tokens = await relay.gather(jobs, request)
    texts = [(e + t, f) for e, (t, f) in zip(echo, texts, strict=True)]
    return completion(rid, model, texts, usage(prompt_tokens, tokens))


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request, service: Served):
    """`n` replies to the conversation; a stream opens each choice with the assistant role."""
    max_tokens = service.check(req)
    ids = service.chat_prompt(req, max_tokens)
    rid, model = new_id("chatcmpl"), service.opts.model_id
    relay = Relay(service.mailbox, req.n)
    jobs = service.jobs([ids], req, max_tokens, chat_reply=True, emit=relay.emit)
    service.submit(jobs)
    if req.stream:
        chunk = functools.partial(_chat_delta, rid, model)
        first = [chat_chunk(rid, model, i, {"role": "assistant", "content": ""}, None)
                 for i in range(req.n)]  # fmt: skip
        return _sse(relay.stream(jobs, chunk, first, wants_usage(req), len(ids)))
    texts, tokens = await relay.gather(jobs, request)
    return chat_completion(rid, model, texts, usage(len(ids), tokens))


def _chat_delta(rid: str, model: str, index: int, text: str, finish: str | None) -> dict:
    """A chat stream's chunk of new text (an empty delta when it only finishes)."""
    return chat_chunk(rid, model, index, {"content": text} if text else {}, finish)


def _sse(batches: AsyncIterator[list[dict]]) -> StreamingResponse:
    """Server-sent events, one write per batch of chunks, then `data: [DONE]`."""

    async def body() -> AsyncIterator[bytes]:
        async for batch in batches:
            yield b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in batch)
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)
