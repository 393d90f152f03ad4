"""A generation job as the batcher runs it: its sampling settings, the events it reports, and
the cache row it holds while it runs.

A row picks its tokens from its own logits with its own `torch.Generator`, so a seeded job
draws the same tokens alone or in company. It reports only text that stays: a tail that may
yet become one of the job's ends (a stop sequence, a chat turn marker) or an unfinished
character is held back (`chat.reply_text`), so a stream never shows what is later cut.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..formats.tokenizer import CharTokenizer, TextTokenizer
from .chat import Masks, banned, reply_end, reply_text
from .sample import sample_next


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
class Row:
    """A job in a cache row: the tokens it has (context + generated) and what is cached."""

    job: Job
    generator: torch.Generator
    context: list[int]  # the prompt's last block_size tokens
    new: list[int] = field(default_factory=list)
    text: str = ""  # the text of `new`
    filled: int = 0  # positions of this row the cache holds
    shown: str = ""
    pending: int | None = None  # a picked token the next decode step feeds

    @classmethod
    def start(cls, job: Job, block_size: int, device: torch.device) -> Row:
        """The row of a newly admitted job: its generator seeded, its prompt's last window."""
        gen = torch.Generator(device).manual_seed(job.sampling.seed)
        return cls(job, gen, list(job.prompt)[-block_size:])

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits [1, V]; until a chat reply shows a visible
        character, the tokens that would leave it blank are masked first."""
        s = self.job.sampling
        ban = None if self.job.masks is None else banned(self.text, self.job.masks)
        if ban is not None:
            logits = logits.masked_fill(ban, float("-inf"))
        return int(sample_next(logits, s.temperature, s.top_k, s.top_p, self.generator)[0])

    def add(self, token: int, tok: TextTokenizer) -> str:
        """Take `token`; returns the text this newly shows (empty while it is held back).
        A char model's text grows by one character (decoding the whole reply per token costs
        0.16 ms a token at 400 tokens); other tokenizers decode it all, as a token can
        complete a character."""
        self.new.append(token)
        if isinstance(tok, CharTokenizer):
            self.text += tok.decode([token])
        else:
            self.text = tok.decode(self.new)
        shown = reply_text(self.text, self.job.ends, self.job.strip)
        if len(shown) <= len(self.shown):
            return ""
        piece, self.shown = shown[len(self.shown) :], shown
        return piece

    def ended(self) -> bool:
        """Whether the text has reached one of the job's ends."""
        return bool(self.job.ends) and reply_end(self.text, self.job.ends) is not None

    def rest(self) -> str:
        """The final event's text: a held-back tail that no end followed is text after all
        (a stripped chat reply keeps nothing back that counts)."""
        if self.job.strip:
            return ""
        cut = reply_end(self.text, self.job.ends) is not None
        final = reply_text(self.text, self.job.ends, False) if cut else self.text
        return final[len(self.shown) :]
