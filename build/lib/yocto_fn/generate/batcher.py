"""Continuous batching: many generations share one KV cache and one decode step.

A `Batcher` owns a cache of `max_batch` rows, each with its own position (`cache.row`), and
one worker thread that is the only code touching the model. Between decode steps it admits
waiting jobs into free rows, prefills one chunk of one prompt (so a long prompt delays the
live rows by one chunk at most), then runs the decode step over every row at once: the
weights are read once for all of them. A row that finishes, hits a stop, or whose client
has gone is freed at once and the next job can take it.

Each job keeps its own sampling settings and `torch.Generator` and picks from its own
logits row, so a seeded job draws the same tokens alone or in company; with temperature 0 it
gives the tokens of `sample.generate` (up to the last bits of the batched matmuls). The
context slides as `generate` slides it: when a row is full, its last `block_size // 2`
tokens are prefilled again from position 0.

The decode step runs over the first `b` rows only, `b` the smallest of 1, 2, 4, ... (and
`max_batch`) that holds every decoding row (`batch_sizes`): one compiled step per size,
built at start-up, so a lone stream costs what batch-1 decoding costs. Jobs take the lowest
free row, and when a row frees, the highest busy row moves down into it (a copy of one row's
cache), so the batch stays dense. Rows inside `b` that are free or still prefilling ride
along; their garbage key/value lands at a position their next real write overwrites before
anything reads it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ..core import cache as kv
from ..core.models import Model
from ..core.params import Params
from ..formats.tokenizer import CharTokenizer, TextTokenizer
from . import products
from .chat import Masks, banned, reply_end, reply_text
from .sample import DecodeStep, compiled_decode_step, decode_step, sample_next


@dataclass(frozen=True)
class Sampling:
    """One job's sampling settings (`sample_next`'s): temperature 0 is greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0


class Event(NamedTuple):
    """What a job reports, from the worker thread: `text` is new visible text; a final
    event has `finish` ("stop", "length", or "error" with the message in `text`)."""

    text: str
    finish: str | None = None
    tokens: int = 0  # tokens generated so far


@dataclass(eq=False)
class Job:
    """One generation. `emit` is called on the worker thread with each `Event` (hand it to
    an event loop with `call_soon_threadsafe`). `ends` are the strings that end it (stop
    sequences; a chat reply's turn markers), cut from the text and never shown; `strip`
    strips the text (a chat reply); `masks` turns on chat's rule that no reply is blank."""

    prompt: Sequence[int]
    max_tokens: int
    sampling: Sampling
    emit: Callable[[Event], None]
    ends: tuple[str, ...] = ()
    strip: bool = False
    masks: Masks | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Free the job's row at the next step (a client that has gone)."""
        self.cancelled.set()


@dataclass(eq=False)
class _Row:
    """A job in a cache row: the tokens it has (context + generated) and what is cached."""

    job: Job
    generator: torch.Generator
    context: list[int]  # the prompt's last block_size tokens
    new: list[int] = field(default_factory=list)
    text: str = ""  # the text of `new`
    filled: int = 0  # positions of this row the cache holds
    shown: str = ""
    pending: int | None = None  # a picked token the next decode step feeds


def batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes decode steps run at: powers of two below `max_batch`, and itself."""
    return sorted({1 << i for i in range(max_batch.bit_length())} | {max_batch})


def compiled_steps(
    model: Model, params: Params, cfg, max_batch: int, cache_dir: Path
) -> dict[int, DecodeStep]:
    """`--compile`'s steps, one per batch size. On CPU each is a packaged step (`aot.py`),
    built once per checkpoint into `cache_dir` and loaded in milliseconds by later starts;
    it also skips torch.compile's Python wrappers, about 0.4 ms of a 1.3 ms token at 4/4/128.
    Elsewhere torch.compile, one graph per size (compiled at `Batcher.warm_up`), replayed as
    CUDA graphs on CUDA."""
    sizes = batch_sizes(max_batch)
    if params["wte"].device.type != "cpu":
        return dict.fromkeys(sizes, compiled_decode_step(model, params["wte"].device))
    from . import aot

    return {
        n: aot.decode_step(model, params, cfg, n, cfg.block_size, cache_dir, rows=max_batch)
        for n in sizes
    }


class QueueFull(Exception):
    """No room for a job: the waiting queue is at its bound."""


class Batcher:
    """The scheduler. `submit` from any thread; `run` the worker loop, `stop` it."""

    def __init__(
        self,
        model: Model,
        params: Params,
        cfg,
        tok: TextTokenizer,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 64,
        steps: Mapping[int, DecodeStep] | None = None,
    ) -> None:
        """`steps` maps each of `batch_sizes(max_batch)` to its decode step (compiled ones);
        by default every size runs the eager step."""
        self.model, self.params, self.cfg, self.tok = model, params, cfg, tok
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.device = params["wte"].device
        self.cache = kv.init_cache(
            cfg, max_batch, cfg.block_size, params["wte"].dtype, self.device, per_row=True
        )
        self.eager = decode_step(model, False)
        self.concatenates = isinstance(tok, CharTokenizer)
        self.sizes = batch_sizes(max_batch)
        self.steps = dict(steps or dict.fromkeys(self.sizes, self.eager))
        if sorted(self.steps) != self.sizes:
            raise ValueError(f"steps for batch sizes {self.sizes} expected, got {sorted(steps)}")
        self.rows: list[_Row | None] = [None] * max_batch
        self.waiting: queue.Queue[Job] = queue.Queue(max_queue)
        self.lock = threading.Lock()
        self.running, self.done = threading.Event(), threading.Event()
        self.running.set()
        self.decode_steps = self.prefills = 0  # forwards run (for tests and stats)

    # ------------------------------------------------------------------ the public side

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue `jobs` all or none; QueueFull when the queue has no room for all."""
        with self.lock:
            if self.waiting.maxsize - self.waiting.qsize() < len(jobs):
                raise QueueFull(f"{self.waiting.qsize()} requests are waiting")
            for job in jobs:
                self.waiting.put_nowait(job)

    def run(self, alive: Callable[[], bool] = lambda: True) -> None:
        """The worker loop, on the calling thread, until `stop` (or until `alive()` turns
        false). Call it on the thread that built and warmed the steps, the process's main
        thread: a compiled CPU step called from a newer thread ran 1.6x slower here (0.93
        against 0.56 ms at 4/4/128), its OpenMP threads spinning against the first ones."""
        try:
            while self.running.is_set() and alive():
                try:
                    self.iterate(block=0.05)
                except Exception as exc:  # a fault in a shared step: fail its jobs, serve on
                    for i, row in enumerate(self.rows):
                        if row is not None:
                            self._finish(i, "error", f"generation failed: {exc}")
        finally:
            self.done.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End the worker loop (from another thread) and wait up to `timeout` s for it to
        leave; jobs still running or waiting get a final "error" event."""
        self.running.clear()
        self.done.wait(timeout)
        for i, row in enumerate(self.rows):
            if row is not None:
                self._finish(i, "error", "the server is shutting down")
        while not self.waiting.empty():
            self.waiting.get_nowait().emit(Event("the server is shutting down", "error"))

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run the decode step twice at every batch size over the idle rows (a step that
        torch.compile compiles does so here, not in the first request); their writes are
        garbage that prefills overwrite."""
        for n in self.sizes:
            tokens = torch.zeros((n, 1), dtype=torch.long, device=self.device)
            pos = torch.zeros(n, dtype=torch.long, device=self.device)
            for _ in range(2):
                self.steps[n](self.params, tokens, self.cfg, self._rows_cache(pos))

    def _rows_cache(self, pos: torch.Tensor) -> kv.KVCache:
        """The batch's buffers with a position for each of the first `len(pos)` rows, the
        rows a step of that size runs over (see `cache`)."""
        return kv.KVCache(self.cache.k, self.cache.v, pos)

    def busy_rows(self) -> int:
        return sum(r is not None for r in self.rows)

    # ------------------------------------------------------------------ the worker

    @torch.no_grad()
    def iterate(self, block: float = 0.0) -> None:
        """One round: admit, one prefill chunk, one decode step. `block` waits up to that
        many seconds for a job when there is nothing to do."""
        self._drop_cancelled()
        self._admit(block if self.busy_rows() == 0 else 0.0)
        self._prefill()
        decoding = [i for i, r in enumerate(self.rows) if r is not None and r.pending is not None]
        if decoding:
            self._decode(decoding)

    def _drop_cancelled(self) -> None:
        for i, row in enumerate(self.rows):
            if row is not None and row.job.cancelled.is_set():
                self.rows[i] = None

    def _admit(self, block: float) -> None:
        for i in range(self.max_batch):
            if self.rows[i] is not None:
                continue
            try:
                job = self.waiting.get(timeout=block) if block else self.waiting.get_nowait()
            except queue.Empty:
                return
            block = 0.0
            if job.cancelled.is_set():
                continue
            gen = torch.Generator(self.device).manual_seed(job.sampling.seed)
            self.rows[i] = _Row(job, gen, list(job.prompt)[-self.cfg.block_size :])

    def _prefill(self) -> None:
        """One prefill forward of at most `prefill_chunk` token rows: new short prompts
        together (`_prefill_together`), else the next chunk of the first row still
        prefilling. After its last chunk, a row picks its first token."""
        todo = [i for i, r in enumerate(self.rows)  # a slide is done in _pick, not here
                if r is not None and not r.new and r.filled < len(r.context)]  # fmt: skip
        if not todo:
            return
        group, longest = [], 0  # the first waiting row, and the new rows that fit with it
        for i in todo:
            n, fresh = len(self.rows[i].context), self.rows[i].filled == 0
            if fresh and (len(group) + 1) * max(longest, n) <= self.prefill_chunk:
                group, longest = [*group, i], max(longest, n)
            elif not group:
                break
        if len(group) > 1:
            return self._prefill_together(group, longest)
        i, row = todo[0], self.rows[todo[0]]
        chunk = row.context[row.filled : row.filled + self.prefill_chunk]
        logits = self._row_forward(i, chunk, row.filled)
        row.filled += len(chunk)
        if row.filled == len(row.context):
            self._pick(i, logits)
        return None

    def _prefill_together(self, group: list[int], longest: int) -> None:
        """Whole prompts of new rows in one forward, right-padded to the longest: the weights
        are read once for all (several requests arriving together each wait for one forward,
        not one each). It runs over a fresh cache of `longest` positions, copied into the
        rows; a padded row's keys past its prompt are garbage that its next writes overwrite
        before anything reads them (a row attends to positions up to its own only)."""
        contexts = [self.rows[i].context for i in group]
        ids = [c + [0] * (longest - len(c)) for c in contexts]
        ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        fresh = kv.init_cache(self.cfg, len(group), longest, self.cache.k.dtype, self.device)
        ops = products.decode_ops(self.params, compiled=False)
        logits, fresh = self.model.forward(self.params, ids, self.cfg, cache=fresh, ops=ops)
        self.prefills += 1
        for k, (i, context) in enumerate(zip(group, contexts, strict=True)):
            for buf, new in ((self.cache.k, fresh.k), (self.cache.v, fresh.v)):
                buf[:, i, :, :longest].copy_(new[:, k])
            self.rows[i].filled = len(context)
            self._pick(i, logits[k : k + 1, len(context) - 1])

    def _row_forward(self, i: int, tokens: list[int], start: int) -> torch.Tensor:
        """Eager forward of `tokens` into row `i` from position `start`: last logits [1, V]."""
        one = kv.row(self.cache, i)
        one = kv.KVCache(one.k, one.v, torch.tensor(start, device=self.device))
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        logits, _ = self.eager(self.params, ids, self.cfg, one)
        self.prefills += 1
        return logits

    def _decode(self, decoding: list[int]) -> None:
        n = next(size for size in self.sizes if size > decoding[-1])
        rows = self.rows[:n]
        pos = torch.tensor([0 if r is None else r.filled for r in rows], device=self.device)
        tokens = [[0 if r is None or r.pending is None else r.pending] for r in rows]
        tokens = torch.tensor(tokens, device=self.device)
        cache = self._rows_cache(pos)
        logits, _ = self.steps[n](self.params, tokens, self.cfg, cache)
        self.decode_steps += 1
        for i in decoding:
            row = self.rows[i]
            row.filled += 1
            row.pending = None
            self._pick(i, logits[i : i + 1])
        self._compact()

    def _compact(self) -> None:
        """Move the highest busy rows down into lower free ones, so the step stays small."""
        while True:
            busy = [i for i, r in enumerate(self.rows) if r is not None]
            free = [i for i, r in enumerate(self.rows) if r is None]
            if not busy or not free or free[0] > busy[-1]:
                return
            src, dst = busy[-1], free[0]
            for buf in (self.cache.k, self.cache.v):
                buf[:, dst].copy_(buf[:, src])
            self.rows[dst], self.rows[src] = self.rows[src], None

    def _pick(self, i: int, logits: torch.Tensor) -> None:
        """Choose row i's next token from its logits [1, V], report it, then finish the
        job, slide a full context, or leave the token for the next decode step. A fault
        here (in this job's sampling or text) fails this job only."""
        row = self.rows[i]
        try:
            while True:
                job, s = row.job, row.job.sampling
                text = row.text
                if job.masks is not None:
                    ban = banned(text, job.masks)
                    if ban is not None:
                        logits = logits.masked_fill(ban, float("-inf"))
                token = int(sample_next(logits, s.temperature, s.top_k, s.top_p, row.generator)[0])
                if token == self.tok.eos_id:
                    return self._finish(i, "stop")
                row.new.append(token)
                text = row.text = self._text(row, token)
                shown = reply_text(text, job.ends, job.strip)
                if len(shown) > len(row.shown):
                    job.emit(Event(shown[len(row.shown) :], tokens=len(row.new)))
                    row.shown = shown
                if job.ends and reply_end(text, job.ends) is not None:
                    return self._finish(i, "stop")
                if len(row.new) >= job.max_tokens:
                    return self._finish(i, "length")
                if row.filled < self.cfg.block_size:
                    row.pending = token
                    return None
                keep = max(1, self.cfg.block_size // 2)
                recent = (row.context + row.new)[-keep:]
                logits = self._row_forward(i, recent, 0)
                row.filled = len(recent)
        except Exception as exc:
            self._finish(i, "error", f"generation failed: {exc}")
        return None

    def _text(self, row: _Row, token: int) -> str:
        """The text of `row.new` after its new last `token`: a char model's text grows by
        one character (decoding the whole reply per token cost 0.16 ms a token at 400
        tokens); other tokenizers decode it all, as a token can complete a character."""
        if self.concatenates:
            return row.text + self.tok.decode([token])
        return self.tok.decode(row.new)

    def _finish(self, i: int, reason: str, message: str = "") -> None:
        row, self.rows[i] = self.rows[i], None
        if row is None:
            return
        if reason == "error":
            return row.job.emit(Event(message, reason, len(row.new)))
        rest = ""
        if not row.job.strip:  # a held-back tail that no end followed is text after all
            text = row.text
            final = (
                text
                if reply_end(text, row.job.ends) is None
                else reply_text(text, row.job.ends, False)
            )
            rest = final[len(row.shown) :]
        row.job.emit(Event(rest, reason, len(row.new)))
        return None
