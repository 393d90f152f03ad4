"""Continuous batching: many generations share one KV cache and one decode step.

A `Batcher` owns a cache of `max_batch` rows, each with its own position (`cache.row`), and
a worker loop (`run`) that is the only code touching the model. Between decode steps it
admits waiting jobs into free rows, prefills one chunk of one prompt (so a long prompt
delays the live rows by one chunk at most), then runs the decode step over every row at
once: the weights are read once for all of them. A row that finishes, hits a stop, or whose
client has gone is freed at once and the next job can take it.

Each job samples from its own logits row (`jobs.Row`); with temperature 0 it gives the
tokens of `sample.generate` (up to the last bits of the batched matmuls). The context
slides as `generate` slides it: when a row is full, its last `block_size // 2` tokens are
prefilled again from position 0.

The decode step runs over the first `b` rows only, `b` the smallest of 1, 2, 4, ... (and
`max_batch`) that holds every decoding row (`batch_sizes`): one step per size on the
batcher's backend, compiled or loaded before the first job (`warm_up`), so a lone stream
costs what batch-1 decoding costs. Jobs take the lowest free row, and when a row frees, the
highest busy row moves down into it (a copy of one row's cache), so the batch stays dense.
Rows inside `b` that are free or still prefilling ride along; their garbage key/value lands
at a position their next real write overwrites before anything reads it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..core import cache as kv
from ..core.models import Model
from ..core.params import Params
from ..formats.tokenizer import TextTokenizer
from . import products
from .jobs import Event, Job, Row
from .steps import Backend, build_decode_step


def batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes decode steps run at: powers of two below `max_batch`, and itself."""
    return sorted({1 << i for i in range(max_batch.bit_length())} | {max_batch})


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
        backend: Backend = "eager",
        cache_dir: Path | None = None,
    ) -> None:
        """Decode steps run on `backend`, one per size of `batch_sizes(max_batch)`; packaged
        ones are kept in `cache_dir` (`steps.build_decode_step`). Prefills run eagerly."""
        self.model, self.params, self.cfg, self.tok = model, params, cfg, tok
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.device = params["wte"].device
        self.cache = kv.init_cache(
            cfg, max_batch, cfg.block_size, params["wte"].dtype, self.device, per_row=True
        )
        self.eager = build_decode_step(model, params, cfg)
        self.sizes = batch_sizes(max_batch)
        self.steps = {n: build_decode_step(model, params, cfg, backend, batch=n, rows=max_batch,
                                           cache_dir=cache_dir) for n in self.sizes}  # fmt: skip
        self.rows: list[Row | None] = [None] * max_batch
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
        thread: a compiled CPU step called from a newer thread runs 1.6x slower (0.93
        against 0.56 ms at 4/4/128 on 2 cores), its OpenMP threads spinning against the
        first ones."""
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
            self.rows[i] = Row.start(job, self.cfg.block_size, self.device)

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
                token = row.pick(logits)
                if token == self.tok.eos_id:
                    return self._finish(i, "stop")
                piece = row.add(token, self.tok)
                if piece:
                    row.job.emit(Event(piece, tokens=len(row.new)))
                if row.ended():
                    return self._finish(i, "stop")
                if len(row.new) >= row.job.max_tokens:
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

    def _finish(self, i: int, reason: str, message: str = "") -> None:
        """Free row i and send its job's final event (`message` is an error's text)."""
        row, self.rows[i] = self.rows[i], None
        if row is not None:
            text = message if reason == "error" else row.rest()
            row.job.emit(Event(text, reason, len(row.new)))
