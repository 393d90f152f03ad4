"""A chat REPL over `sample.generate`.

The model is a plain language model, so a conversation is text laid out as lines
`System: ...`, `User: ...`, `Assistant: ...`, and the prompt ends with `Assistant:` for the
model to continue. A reply may run over several lines: it ends at the first blank line, at a
line the model starts with a turn marker (`User:`, `System:` or `Assistant:`), at <eos> or
after --max-new-tokens; the marker is neither shown nor kept. Until the reply shows a visible
character, the tokens that would end it or leave it blank are masked, so no reply is empty
(a small char model would otherwise end the line at once). The context is rebuilt each turn
and the oldest turns are dropped until the system prompt, the history and room for the reply
fit in `block_size`.

The layout (`prompt_ids`) and the reading of generated text (`reply_end`, `reply_text`,
`banned`) are pure functions, for any front end that holds a conversation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TextIO

import torch

from ..config import ChatConfig
from ..formats import tokenizer as tokenizers
from .loading import drop_unknown_chars, load_model, sampling_kwargs, unescape
from .sample import generate

ROLES = ("System", "User", "Assistant")
REPLY_ENDS = ("\n\n", *(f"\n{role}:" for role in ROLES))


def encode(tok: tokenizers.TextTokenizer, text: str) -> list[int]:
    """Ids of `text`; a char vocabulary skips the characters it lacks (the layout's own
    letters may be missing from a small corpus)."""
    if isinstance(tok, tokenizers.CharTokenizer):
        text = tok.known_only(text)
    return tok.encode(text)


def turn_text(user: str, reply: str) -> str:
    """One answered turn as the model reads it in the history."""
    return f"User: {user}\nAssistant: {reply}\n"


def prompt_ids(
    tok: tokenizers.TextTokenizer,
    system: str,
    turns: Sequence[tuple[str, str]],
    user: str,
    budget: int,
) -> list[int]:
    """Ids of <bos>, `System: {system}`, the most recent (user, reply) turns that fit in
    `budget` tokens, then `User: {user}` and `Assistant:`: the oldest turns go first, the
    system line stays."""
    head = [tok.bos_id] if tok.bos_id is not None else []
    head += encode(tok, f"System: {system}\n" if system else "")
    tail = encode(tok, f"User: {user}\nAssistant:")
    history: list[int] = []
    for asked, answered in reversed(turns):
        ids = encode(tok, turn_text(asked, answered))
        if len(head) + len(ids) + len(history) + len(tail) > budget:
            break
        history = ids + history
    return (head + history + tail)[-budget:]


def reply_end(text: str, ends: Sequence[str] = REPLY_ENDS) -> int | None:
    """Where the reply in generated `text` ends: at the first of `ends` (by default its first
    blank line or turn marker, a line that starts `User:`, `System:` or `Assistant:`); None
    while none has appeared."""
    found = [i for i in (text.find(end) for end in ends if end) if i >= 0]
    return min(found) if found else None


def reply_text(text: str, ends: Sequence[str] = REPLY_ENDS, strip: bool = True) -> str:
    """The reply that generated `text` surely holds (stripped, unless `strip` is False): up
    to its end, or while it is still open, without a tail that may yet become an end (`\n`,
    `\nUs`, ...) or an unfinished multi-byte character. It only grows as `text` grows, so a
    stream of it never shows what is later cut."""
    end = reply_end(text, ends)
    held = text[: len(text) - _open_end(text, ends)].rstrip("\ufffd")
    text = held if end is None else text[:end]
    return text.strip() if strip else text


def _open_end(text: str, ends: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is the start of one of `ends`."""
    starts = (k for end in ends for k in range(1, len(end)) if text.endswith(end[:k]))
    return max(starts, default=0)


class Masks(NamedTuple):
    """Per-token tables of a vocabulary (bool [V]) for the visible-character rule."""

    blank: torch.Tensor
    """No visible character: whitespace, newlines, <eos> and the other special tokens."""
    opening: torch.Tensor
    """What may not open a reply: the blank tokens but those of plain spaces and tabs."""


def reply_masks(tok: tokenizers.TextTokenizer, device: torch.device | str = "cpu") -> Masks:
    """The tables of `banned`, built once per vocabulary: a token's text decides its rows."""
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    blank = torch.tensor([not t.strip() for t in texts], device=device)
    if tok.eos_id is not None:
        blank[tok.eos_id] = True
    spaces = torch.tensor([bool(t) and not t.strip(" \t") for t in texts], device=device)
    return Masks(blank, blank & ~spaces)


def banned(text: str, tables: Masks) -> torch.Tensor | None:
    """Tokens the next pick may not be, given the generated `text` so far: until the reply
    shows a visible character, every token that would leave it blank (one leading run of
    spaces is allowed: the usual separator after `Assistant:`); after that, none."""
    if text.strip():
        return None
    return tables.blank if text else tables.opening


class ReplyStream:
    """Writes the reply as its tokens come: each call writes what `reply_text` has added."""

    def __init__(self, decode: Callable[[list[int]], str], write: Callable[[str], object]):
        self.decode, self.write = decode, write
        self.ids: list[int] = []
        self.reply = ""

    def __call__(self, tokens: torch.Tensor) -> None:
        self.ids.append(int(tokens[0]))
        reply = reply_text(self.decode(self.ids))
        if len(reply) > len(self.reply):
            self.write(reply[len(self.reply) :])
        self.reply = reply


class Conversation:
    """System prompt plus (user, reply) turns, rendered to ids that fit the context."""

    def __init__(self, tok: tokenizers.TextTokenizer, system: str, budget: int) -> None:
        self.tok, self.system, self.budget = tok, system, budget
        self.turns: list[tuple[str, str]] = []

    def prompt_ids(self, user: str) -> list[int]:
        return prompt_ids(self.tok, self.system, self.turns, user, self.budget)

    def add(self, user: str, reply: str) -> None:
        self.turns.append((user, reply))

    def reset(self) -> None:
        self.turns.clear()


def lines(stream: TextIO, interactive: bool) -> Iterator[str]:
    """User lines; at a terminal each is asked for with a `You: ` prompt."""
    while True:
        if interactive:
            try:
                yield input("You: ")
            except EOFError:
                print()
                return
        else:
            line = stream.readline()
            if not line:
                return
            yield line.rstrip("\n")


def run(
    opts: ChatConfig,
    stdin: TextIO | None = None,
    write: Callable[[str], object] | None = None,
) -> int:
    """`cli.py chat`: answer each line until `/exit` or end of input; returns turns answered."""
    stdin = stdin or sys.stdin
    write = write or (lambda s: print(s, end="", flush=True))
    loaded = load_model(opts)
    tok, device = loaded.tok, loaded.params["wte"].device
    reply_room = min(opts.max_new_tokens, loaded.cfg.block_size // 2)
    convo = Conversation(tok, unescape(opts.system_prompt), loaded.cfg.block_size - reply_room)
    kwargs = sampling_kwargs(opts, loaded)
    tables = reply_masks(tok, device)

    def text(new: torch.Tensor) -> str:
        return tok.decode(new[0].tolist())

    interactive = stdin is sys.stdin and sys.stdin.isatty()
    if interactive:
        write("Type /reset to clear the history, /exit (or Ctrl-D) to quit.\n")
    answered = 0
    for raw in lines(stdin, interactive):
        user = raw.strip()
        if user == "/exit":
            break
        if user == "/reset":
            convo.reset()
            write("(history cleared)\n")
            continue
        if not user:
            continue
        if isinstance(tok, tokenizers.CharTokenizer):
            user = drop_unknown_chars(tok, user)
        write("Assistant: ")
        shown = ReplyStream(tok.decode, write)
        generate(
            loaded.model, loaded.params, loaded.cfg, convo.prompt_ids(user),
            max_new_tokens=opts.max_new_tokens, eos_id=tok.eos_id, stream=shown,
            ban=lambda new: banned(text(new), tables),
            finished=lambda new: torch.tensor([reply_end(text(new)) is not None], device=device),
            **kwargs,
        )  # fmt: skip
        write("\n")
        convo.add(user, shown.reply)
        answered += 1
    return answered
