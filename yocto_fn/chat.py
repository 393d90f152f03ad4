"""A chat REPL over `sample.generate`.

The model is a plain language model, so a conversation is just text laid out as
`System: ...`, `User: ...`, `Assistant: ...` lines; a reply ends at a newline or <eos>.
The context is rebuilt each turn and the oldest turns are dropped until the system prompt,
the history and room for the reply fit in `block_size`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from . import tokenizer as tokenizers
from .config import ChatConfig
from .sample import (
    Loaded,
    TextStream,
    drop_unknown_chars,
    generate,
    load_model,
    sampling_kwargs,
    unescape,
)


def stop_ids(tok: tokenizers.TextTokenizer) -> set[int]:
    """Tokens that end a reply: <eos>, and every token whose text contains a newline."""
    ids = {i for i in range(tok.vocab_size) if "\n" in tok.decode([i])}
    return ids | ({tok.eos_id} if tok.eos_id is not None else set())


class Conversation:
    """System prompt plus (user, assistant) turns, rendered to ids that fit the context."""

    def __init__(self, loaded: Loaded, system_prompt: str, reply_room: int) -> None:
        self.loaded = loaded
        self.system = f"System: {system_prompt}\n" if system_prompt else ""
        self.turns: list[str] = []
        self.reply_room = reply_room

    def encode(self, text: str) -> list[int]:
        tok = self.loaded.tok
        if isinstance(tok, tokenizers.CharTokenizer):
            text = tok.known_only(text)
        return tok.encode(text)

    def prompt_ids(self, user: str) -> list[int]:
        """Ids of system + the most recent turns that fit + this user turn + `Assistant:`."""
        tok = self.loaded.tok
        budget = self.loaded.cfg.block_size - self.reply_room
        head = ([tok.bos_id] if tok.bos_id is not None else []) + self.encode(self.system)
        tail = self.encode(f"User: {user}\nAssistant:")
        history: list[int] = []
        for turn in reversed(self.turns):
            ids = self.encode(turn)
            if len(head) + len(ids) + len(history) + len(tail) > budget:
                break
            history = ids + history
        return (head + history + tail)[-budget:]

    def add(self, user: str, reply: str) -> None:
        self.turns.append(f"User: {user}\nAssistant:{reply}\n")

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
    reply_room = min(opts.max_new_tokens, loaded.cfg.block_size // 2)
    convo = Conversation(loaded, unescape(opts.system_prompt), reply_room)
    kwargs = sampling_kwargs(opts, loaded)
    stops = stop_ids(loaded.tok)
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
        if isinstance(loaded.tok, tokenizers.CharTokenizer):
            user = drop_unknown_chars(loaded.tok, user)
        write("Assistant:")
        shown = TextStream(loaded.tok.decode, lambda s: write(s.split("\n", 1)[0]))
        new = generate(
            loaded.model, loaded.params, loaded.cfg, convo.prompt_ids(user),
            max_new_tokens=opts.max_new_tokens, eos_id=stops, stream=shown, **kwargs,
        )  # fmt: skip
        ids = new[0].tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        reply = loaded.tok.decode(ids[:end]).split("\n", 1)[0]
        write("\n")
        convo.add(user, reply)
        answered += 1
    return answered
