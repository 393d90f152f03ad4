"""The embedded default conversation set: questions about Python's builtins and standard
library, answered from their docstrings, so chat fine-tuning has data on any machine.

Like the default text corpus, it is built from what every CPython ships, and it is the same
for a given Python version and platform (`os.path` is `posixpath` or `ntpath`, and `sys` and
`time` offer some functions on some systems only): names are walked in sorted order and
every choice (the question's phrasing, which answers pair into a two-turn conversation) is
a stable function of the names, never of hash seeds or of an unsorted container's order.

Each conversation is `{"messages": [...], "topic": ..., "split": ...}` with alternating
user/assistant messages and no system message (the set is trained without a system prompt).
Its topic is the module or type its names come from (`builtins`, `str`, `math`, `os.path`,
...); the conversations of `VAL_TOPICS` are pinned to validation and the rest to training,
so the model is judged on names of a kind it has seen but never these names, and the split
is the same whatever `--val-fraction` or `--split-seed` say.

Every conversation fits the char-level demo model's block: rendered as
`User: {question}\\nAssistant: {answer}\\n\\n` per turn it is at most `MAX_RENDERED` characters,
all of them in the default corpus's character set (a model trained on that corpus has no id
for any other character).
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
import unicodedata
import zlib
from pathlib import Path

import orjson

from .. import fileio
from .text import DEFAULT_CORPUS, default_corpus_text, sanitize_basic

DEFAULT_CONVERSATIONS = DEFAULT_CORPUS.with_name("default_conversations.jsonl")
MAX_RENDERED = 128  # the demo model's block: a whole conversation must fit in one window
MAX_ANSWER = 70  # characters; a shorter cut when the question leaves less room
MIN_ANSWER = 12  # characters; shorter summaries say too little to be worth training on

TYPE_TOPICS = ("str", "list", "dict", "set")  # builtin types whose methods are asked about
MODULE_TOPICS = (
    "base64", "bisect", "calendar", "cmath", "collections", "contextlib", "copy", "dataclasses",
    "difflib", "enum", "fnmatch", "functools", "glob", "heapq", "inspect", "ipaddress",
    "itertools", "json", "logging", "math", "operator", "os.path", "pprint", "random", "re",
    "secrets", "shlex", "shutil", "statistics", "string", "sys", "tempfile", "textwrap",
    "threading", "time", "traceback", "typing", "urllib.parse",
)  # fmt: skip
VAL_TOPICS: tuple[str, ...] = ("itertools", "statistics", "threading", "traceback")
"""Topics pinned whole to validation (about 10% of the conversations).

Mid-size ones, each with a trained sibling of its kind (functools and operator for
itertools, math and random for statistics, contextlib for threading, inspect and logging
for traceback): validation then asks about unseen names of a familiar kind, and training
keeps the large topics (builtins, str, math)."""

QUESTIONS = (
    "What does {name} do?",
    "Explain {name}.",
    "What is {name} for?",
    "Tell me about {name}.",
)
FOLLOW_UPS = ("And {name}?", "What about {name}?")  # the second question of a two-turn one

Turn = tuple[str, str]  # (question, answer)
Entry = tuple[str, str, str]  # (name as users write it, question, answer)


def _stable_index(name: str, n: int) -> int:
    """A choice among n that depends only on the name (str's hash is salted per process)."""
    return zlib.crc32(name.encode("utf-8")) % n


def _topic_objects(topic: str) -> list[tuple[str, object]]:
    """(attribute name, object) pairs of a topic, sorted, public callables only.

    Exceptions are left out (they are not something one asks "what does it do" about), and
    so are aliases whose own name differs (`bisect.bisect` is `bisect_right`): their
    docstrings describe the other name. A hook a program may replace (`sys.excepthook`,
    which pytest and IPython do replace) is read from the original kept beside it
    (`sys.__excepthook__`), so the set does not depend on who imported it.
    """
    if topic == "builtins":
        source: object = builtins
    elif topic in TYPE_TOPICS:
        source = getattr(builtins, topic)
    else:
        source = importlib.import_module(topic)
    names = getattr(source, "__all__", None) if inspect.ismodule(source) else None
    out = []
    for attr in sorted(names if names is not None else dir(source)):
        obj = getattr(source, attr, None)
        if inspect.ismodule(source) and attr.endswith("hook"):
            obj = getattr(source, f"__{attr}__", obj)
        if attr.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        if getattr(obj, "__name__", attr) != attr:
            continue
        out.append((attr, obj))
    return out


def _qualified(topic: str, attr: str) -> str:
    """The name as users write it: `len`, `str.upper`, `math.sqrt`, `os.path.join`."""
    return attr if topic == "builtins" else f"{topic}.{attr}"


def _ascii(text: str) -> str:
    """Typographic punctuation to ASCII, accents dropped (e -> e), anything else removed."""
    text = unicodedata.normalize("NFKD", sanitize_basic(text))
    return text.encode("ascii", "ignore").decode("ascii")


SIGNATURE = re.compile(r"[\w.]+\(.*(\)|->.*)")  # `sqrt(x)`, `S.upper() -> str`, `zip(...) --> ...`
ABBREVIATIONS = ("e.g.", "i.e.", "eg.", "etc.", "vs.")  # a full stop that ends no sentence
CLAUSE_END = re.compile(r"[,;:] | - | \(")
TRAILING_WORDS = frozenset(
    ("a", "an", "and", "as", "at", "by", "for", "from", "in", "into", "is", "of", "on", "or")
    + ("that", "the", "to", "with")
)  # a word cut ending on one of these leaves the sentence dangling


def _summary(doc: str) -> str:
    """The docstring's first prose paragraph as one ASCII line: paragraphs that open with a
    signature line (`sqrt(x)`, `name(...) -> ...`) or a doctest (`>>>`) are skipped."""
    for paragraph in re.split(r"\n\s*\n", doc.strip()):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        if lines and not SIGNATURE.fullmatch(lines[0]) and not lines[0].startswith(">>>"):
            return " ".join(re.sub("`+", "'", _ascii(" ".join(lines))).split())
    return ""


def _sentences(text: str) -> list[str]:
    """The text cut after each `.`, `!` or `?` followed by a space, abbreviations excepted."""
    out: list[str] = []
    for piece in re.split(r"(?<=[.!?]) +", text):
        if out and out[-1].lower().endswith(ABBREVIATIONS):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return out


def _balanced(text: str) -> bool:
    """No bracket or quote left open by a cut."""
    return all(text.count(a) == text.count(b) for a, b in ("()", "[]", "{}")) and (
        text.count('"') % 2 == 0
    )


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters ending with a full stop, cut where meaning survives best:
    after the whole sentences that fit, else before a clause (`, `, `; `, ` (`) of the first
    sentence, else after a word that does not leave the sentence dangling (`of`, `the`).
    Empty when no cut fits with its brackets and quotes closed."""
    sentences = _sentences(text)
    whole = ""
    for sentence in sentences:
        joined = f"{whole} {sentence}" if whole else sentence
        if len(joined.rstrip(".!?")) >= limit:
            break
        whole = joined
    if whole and _balanced(whole):
        return whole.rstrip(" ,;:.!?") + "."
    first = sentences[0]
    for end in reversed([m.start() for m in CLAUSE_END.finditer(first)]):
        cut = first[:end].rstrip(" ,;:.")
        if len(cut) < limit and _balanced(cut):
            return cut + "."
    for end in reversed([m.start() for m in re.finditer(" ", first)]):
        cut = first[:end].rstrip(" ,;:.")
        last = cut.rsplit(" ", 1)[-1].lower()
        if len(cut) < limit and _balanced(cut) and last not in TRAILING_WORDS:
            return cut + "."
    return ""


def _render(turns: list[Turn]) -> str:
    """The layout the chat training renders a conversation in (no system message)."""
    return "".join(f"User: {q}\nAssistant: {a}\n\n" for q, a in turns)


def _entry(name: str, doc: str, vocab: set[str]) -> Entry | None:
    """One name's question and answer, or None when its docstring gives no usable answer
    (too short, not a sentence, or a character the default corpus lacks)."""
    question = QUESTIONS[_stable_index(name, len(QUESTIONS))].format(name=name)
    room = MAX_RENDERED - len(_render([(question, "")]))
    answer = _cut(_summary(doc), min(MAX_ANSWER, room))
    if len(answer) < MIN_ANSWER or not answer[0].isupper() or not set(answer + question) <= vocab:
        return None
    return name, question, answer


def _conversation(topic: str, turns: list[Turn]) -> dict:
    messages = []
    for question, answer in turns:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    return {"messages": messages, "topic": topic,
            "split": "val" if topic in VAL_TOPICS else "train"}  # fmt: skip


def _pairs(entries: list[Entry]) -> list[list[Turn]]:
    """Entries grouped into conversations, in order: each entry takes, as a follow-up second
    turn ("And {name}?"), the first later entry not yet taken whose answer still fits
    `MAX_RENDERED` with it. Only short answers can pair (two turns share the 128
    characters), so most conversations stay single-turn."""
    out, taken = [], set()
    for i, (_, question, answer) in enumerate(entries):
        if i in taken:
            continue
        conversation = [(question, answer)]
        for j in range(i + 1, len(entries)):
            name, _, other = entries[j]
            follow = FOLLOW_UPS[_stable_index(name, len(FOLLOW_UPS))].format(name=name)
            pair = [(question, answer), (follow, other)]
            if j not in taken and len(_render(pair)) <= MAX_RENDERED:
                conversation = pair
                taken.add(j)
                break
        out.append(conversation)
    return out


def topic_conversations(topic: str, vocab: set[str]) -> list[dict]:
    """One topic's conversations, its names in sorted order."""
    entries = []
    for attr, obj in _topic_objects(topic):
        entry = _entry(_qualified(topic, attr), obj.__doc__ or "", vocab)
        if entry is not None:
            entries.append(entry)
    return [_conversation(topic, turns) for turns in _pairs(entries)]


def default_conversations() -> list[dict]:
    """The default set: every topic's conversations, topics in sorted order."""
    vocab = set(default_corpus_text())
    topics = sorted(("builtins", *TYPE_TOPICS, *MODULE_TOPICS))
    return [c for topic in topics for c in topic_conversations(topic, vocab)]


def conversations_jsonl(conversations: list[dict]) -> bytes:
    """JSONL: one conversation per line, each line newline-terminated."""
    return b"".join(orjson.dumps(c) + b"\n" for c in conversations)


def ensure_default_conversations(path: Path = DEFAULT_CONVERSATIONS) -> Path:
    """Write the default set once (atomically), so preparations read a stable file."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(path, conversations_jsonl(default_conversations()))
    return path
