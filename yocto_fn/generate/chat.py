"""A chat REPL over `sample.generate`.

A conversation becomes tokens through the chat template (`formats.chat_template`), the same
render a fine-tune on conversations trained with: `User: ...` and `Assistant: ...` turns
after an optional system message, each reply closed by an end of turn. The prompt ends with
`Assistant:` for the model to continue. A reply ends at its end of turn (<eos>, or a blank
line in a char vocabulary), at a line the model starts with a turn label (`User:`,
`System:` or `Assistant:`: a base model that never saw the template runs on that way), or
after --max-new-tokens; the end is neither shown nor kept. Until the reply shows a visible
character, the tokens that would end it or leave it blank are masked, so no reply is empty.
The context is rebuilt each turn and the oldest turns are dropped until the system message,
the history and room for the reply fit in `block_size`.

The reading of generated text (`reply_end`, `reply_text`, `banned`) is pure functions, for
any front end that holds a conversation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TextIO

import torch

from ..config import ChatConfig
from ..formats import chat_template
from ..formats import tokenizer as tokenizers
from ..formats.chat_template import REPLY_ENDS
from .loading import drop_unknown_chars, load_model, sampling_kwargs, system_prompt
from .sample import generate


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
    """The messages so far (a system message first, if any), rendered by the chat template
    into ids that fit the context."""

    def __init__(self, tok: tokenizers.TextTokenizer, system: str | None, budget: int) -> None:
        self.tok, self.budget = tok, budget
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages: list[dict[str, str]] = []

    def prompt_ids(self, user: str) -> list[int]:
        asked = [*self.system, *self.messages, {"role": "user", "content": user}]
        return chat_template.prompt(self.tok, asked, self.budget)

    def add(self, user: str, reply: str) -> None:
        self.messages += [{"role": "user", "content": user}]
        if reply.strip():
            self.messages += [{"role": "assistant", "content": reply}]

    def reset(self) -> None:
        self.messages.clear()


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
    system = system_prompt(opts.system_prompt, loaded)
    if system and isinstance(tok, tokenizers.CharTokenizer):
        system = drop_unknown_chars(tok, system)
    convo = Conversation(tok, system, loaded.cfg.block_size - reply_room)
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
