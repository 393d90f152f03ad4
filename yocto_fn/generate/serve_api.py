"""The OpenAI wire format `serve` speaks: request bodies (validated), replies and errors,
the message list read as a conversation, and the two ASGI guards (API key, body size).

Requests are pydantic models, so FastAPI checks types and ranges and publishes them in
`/openapi.json`; a body that fails gets a 400 with an OpenAI-style error (`error_body`).
Fields this server does not know are ignored, as OpenAI's clients send some of their own;
`logprobs`, which it knows but does not compute, is refused unless left unset or off.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..formats import chat_template

MAX_SEED = 2**63 - 1
MAX_STOPS = 4

Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class Sampled(BaseModel):
    """What completions and chat completions share."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Field(ge=0, le=2**31)] | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    logprobs: bool | int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops


class CompletionRequest(Sampled):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    echo: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatRequest(Sampled):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class ApiError(Exception):
    """A request the server refuses: HTTP status, message, and the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status, message, kind, param, code,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line from pydantic's errors (the first few), and the field of the first."""
    parts, param = [], None
    for e in errors[:3]:
        if e.get("type") == "json_invalid":
            error = (e.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON ({error})", None
        if tuple(e.get("loc", ())) == ("body",):
            return "the request body must be a JSON object (Content-Type: application/json)", None
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        param = param or where or None
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts), param


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion(rid: str, model: str, texts: list[tuple[str, str]], usage: dict) -> dict:
    """A /v1/completions reply: `texts` holds (text, finish_reason) per choice."""
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                    for i, (t, f) in enumerate(texts)],
        "usage": usage,
    }  # fmt: skip


def chat_completion(rid: str, model: str, texts: list[tuple[str, str]], usage: dict) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                     "finish_reason": f, "logprobs": None} for i, (t, f) in enumerate(texts)],
        "usage": usage,
    }  # fmt: skip


def completion_chunk(rid: str, model: str, index: int, text: str, finish: str | None) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}],
    }  # fmt: skip


def chat_chunk(rid: str, model: str, index: int, delta: dict, finish: str | None) -> dict:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }  # fmt: skip


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def conversation(messages, default_system: str | None) -> list[dict[str, str]]:
    """OpenAI messages as the chat template's: system and developer messages become one
    system message first (or `default_system` when there is none), user and assistant
    messages keep their order, and a message with no text is left out. The last message
    must be the user's."""
    systems = [m.content for m in messages if m.role in ("system", "developer")]
    system = "\n".join(c for c in systems if chat_template.clean(c)) if systems else default_system
    rest = [m for m in messages if m.role in ("user", "assistant")]
    if not rest or rest[-1].role != "user" or not chat_template.clean(rest[-1].content):
        raise ApiError(400, "the last message must be the user's, with text", param="messages")
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": m.role, "content": m.content} for m in rest
                   if chat_template.clean(m.content)]  # fmt: skip


# ---------------------------------------------------------------------------- middleware


class ApiKey:
    """ASGI middleware: with a key set, /v1/ needs `Authorization: Bearer KEY` (401)."""

    def __init__(self, app, key: str | None) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if self.key and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given, f"Bearer {self.key}"):
                message = "missing or wrong API key; send Authorization: Bearer KEY"
                return await _send_json(send, 401, error_body(message, code="invalid_api_key"))
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413 before any parsing."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later messages: the disconnect a stream waits for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        kib = self.limit // 1024
        await _send_json(send, 413, error_body(f"request body over {kib} KiB (--max-body-kb)"))


async def _send_json(send, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
