"""The bridge between the model's thread and the HTTP server's event loop.

The batcher calls each job's `emit` on the model's thread; a request handler awaits its
events on the event loop. `Relay` is one request's end of it: it gathers a reply or streams
its chunks, and cancels the request's jobs when the client goes. `Mailbox` carries the
events over, one wake-up of the loop per burst.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from .jobs import Event, Job
from .serve_api import ApiError, error_body, usage

Chunk = Callable[[int, str, str | None], dict]  # (choice, text, finish) -> a chunk


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

    async def gather(self, jobs: list[Job], request: Request) -> tuple[list[tuple[str, str]], int]:
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

    async def stream(self, jobs: list[Job], chunk: Chunk, first: list[dict], with_usage: bool,
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
