"""The chat template: the one place where a conversation becomes tokens.

A conversation is a list of messages in the OpenAI / Hugging Face form, `{"role": "system" |
"user" | "assistant", "content": str}`. `render` lays it out as

    [<bos>]System: {system}\\n
    User: {user}\\n
    Assistant: {reply}<end of turn>
    User: ...

and returns the ids with a per-token loss mask that is 1 on each reply (from the space after
`Assistant:`) and its end-of-turn marker, 0 elsewhere, so a fine-tune learns to answer and
to stop, and never to write the user's lines. `prompt` renders a conversation whose last
message is the user's, with `Assistant:` appended, for `chat`, `serve` and the chat page:
the model is asked in exactly the layout it was trained on.

The role labels are plain text in every vocabulary: a base model's tokenizer then needs no
new ids, so a fine-tune keeps the base's embedding, and a char model can hold them at all.
The end of turn is the tokenizer's `<eos>` where it has one (a real special token, which no
reply text can spell), else a blank line, which `clean` removes from every message's content
so that it cannot occur inside one. docs/chat.md has the measurement behind the choice.

Segments are encoded one by one and concatenated, so the boundary between the prompt part
and a reply is a token boundary in every vocabulary, and an ask encodes exactly as the same
turn did in training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..errors import UserError
from .tokenizer import CharTokenizer, TextTokenizer

NAME = "yocto-chat"
VERSION = 1
ROLES = ("system", "user", "assistant")
LABELS = {"system": "System:", "user": "User:", "assistant": "Assistant:"}
BLANK_LINE = "\n\n"
REPLY_ENDS = (BLANK_LINE, *(f"\n{label}" for label in LABELS.values()))
"""Text that ends a generated reply: the char end of turn, or the model starting a new
line of a turn (a base model, never fine-tuned, may run on that way)."""

Message = Mapping[str, Any]


class Rendered(NamedTuple):
    ids: list[int]
    mask: list[int]
    """1 where the token is part of a reply or its end of turn (trained on), else 0."""


def clean(content: str) -> str:
    """A message's text as the template lays it out: stripped, with runs of blank lines
    folded into one newline (a blank line is the char vocabularies' end of turn)."""
    return re.sub(r"\n\s*\n", "\n", content.strip().replace("\r\n", "\n"))


def problem(messages: Any) -> str | None:
    """Why `messages` is not a conversation the template can render (None: it is): a
    non-empty list of {role, content} objects with known roles and non-empty text, at
    least one user message, system messages only first."""
    if not isinstance(messages, list) or not messages:
        return "no messages (expected a non-empty list of {role, content})"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            return f"message {i} is not an object with role and content"
        if m["role"] not in ROLES:
            known = ", ".join(ROLES)
            return f"message {i} has unknown role {m['role']!r} (expected one of {known})"
        if not isinstance(m["content"], str) or not clean(m["content"]):
            return f"message {i} ({m['role']}) has empty content"
        if m["role"] == "system" and any(p["role"] != "system" for p in messages[:i]):
            return f"message {i} is a system message after the conversation started"
    if not any(m["role"] == "user" for m in messages):
        return "no user message"
    return None


def end_of_turn(tok: TextTokenizer) -> list[int]:
    """The ids that close a reply: `<eos>`, or a blank line in a vocabulary without one."""
    return [tok.eos_id] if tok.eos_id is not None else _encode(tok, BLANK_LINE)


def _encode(tok: TextTokenizer, text: str) -> list[int]:
    """Ids of the template's own text; a char vocabulary that lacks one of its letters
    (a small corpus) leaves it out, the same way in training and at inference."""
    if isinstance(tok, CharTokenizer):
        text = tok.known_only(text)
    return tok.encode(text)


def _segments(tok: TextTokenizer, m: Message) -> list[tuple[list[int], int]]:
    """(ids, mask) pieces of one message."""
    label, text = LABELS[m["role"]], clean(m["content"])
    if m["role"] != "assistant":
        return [(_encode(tok, f"{label} ") + tok.encode(text) + _encode(tok, "\n"), 0)]
    return [(_encode(tok, label), 0), (tok.encode(f" {text}") + end_of_turn(tok), 1)]


def render(tok: TextTokenizer, messages: Sequence[Message], ask: bool = False) -> Rendered:
    """Ids and loss mask of `messages` (see the module docstring); `ask` appends the
    `Assistant:` that asks for the next reply. A char vocabulary refuses characters it
    lacks in the content (`CharTokenizer.encode`): callers drop or replace them first."""
    ids: list[int] = [tok.bos_id] if tok.bos_id is not None else []
    mask = [0] * len(ids)
    for m in messages:
        for piece, bit in _segments(tok, m):
            ids += piece
            mask += [bit] * len(piece)
    if ask:
        label = _encode(tok, LABELS["assistant"])
        ids, mask = ids + label, mask + [0] * len(label)
    return Rendered(ids, mask)


def turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(leading system messages, the rest cut before each user message): the units that
    `prompt` and `fit` keep or drop whole."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    groups: list[list[Message]] = []
    for m in messages[head:]:
        if m["role"] == "user" or not groups:
            groups.append([])
        groups[-1].append(m)
    return list(messages[:head]), groups


def prompt(tok: TextTokenizer, messages: Sequence[Message], budget: int) -> list[int]:
    """The ids that ask for a reply to `messages` (its last message is the user's): the
    system messages, the most recent whole turns that fit in `budget` tokens with the last
    one, and `Assistant:`. Older turns go first; the system messages and the last turn stay
    (a last turn longer than the budget keeps its end)."""
    system, groups = turns(messages)
    kept: list[Message] = []
    for group in reversed(groups[:-1]):
        trial = render(tok, [*system, *group, *kept, *groups[-1]], ask=True).ids
        if len(trial) > budget:
            break
        kept = [*group, *kept]
    return render(tok, [*system, *kept, *groups[-1]], ask=True).ids[-budget:]


def fit(tok: TextTokenizer, messages: Sequence[Message], limit: int) -> list[Message] | None:
    """The longest run of leading whole turns (after the system messages) whose render is at
    most `limit` tokens and still ends on a reply; None when not even the first turn fits."""
    system, groups = turns(messages)
    best: list[Message] | None = None
    for n in range(1, len(groups) + 1):
        candidate = [*system, *(m for g in groups[:n] for m in g)]
        if len(render(tok, candidate).ids) > limit:
            break
        if candidate[-1]["role"] == "assistant":
            best = candidate
    return best


def record(system_prompt: str | None) -> dict[str, Any]:
    """What a checkpoint keeps of the template it was trained with, and the system prompt
    its conversations had (None: none, or not one shared by all)."""
    return {"template": NAME, "version": VERSION, "system_prompt": system_prompt}


def check_record(rec: Mapping[str, Any] | None, source: object) -> None:
    """Refuse a template this code cannot render (a later version's checkpoint)."""
    if rec is None or (rec.get("template"), rec.get("version")) == (NAME, VERSION):
        return
    raise UserError(
        f"{source} was trained with chat template {rec.get('template')} version "
        f"{rec.get('version')}, and this yocto_fn renders {NAME} version {VERSION}; "
        "use the yocto_fn that trained it"
    )
