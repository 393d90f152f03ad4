"""The embedded default conversation set: deterministic, well formed, and small enough for
the char-level demo model's 128-character block in the default corpus's characters."""

import hashlib
import os
import subprocess
import sys
from collections import Counter

import orjson
import pytest

from yocto_fn.data import (
    VAL_TOPICS,
    conversations_jsonl,
    default_conversations,
    default_corpus_text,
    ensure_default_conversations,
)
from yocto_fn.data import conversations as convo

DIGEST = (
    "import hashlib; from yocto_fn.data import conversations_jsonl, default_conversations; "
    "print(hashlib.sha256(conversations_jsonl(default_conversations())).hexdigest())"
)


@pytest.fixture(scope="module")
def conversations() -> list[dict]:
    return default_conversations()


def turns(conversation: dict) -> list[tuple[str, str]]:
    messages = conversation["messages"]
    return [
        (messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages), 2)
    ]


def rendered(conversation: dict) -> str:
    return "".join(f"User: {u}\nAssistant: {a}\n\n" for u, a in turns(conversation))


def asked_name(question: str) -> str:
    """The name a question asks about, read back through the phrasings."""
    for phrasing in convo.QUESTIONS + convo.FOLLOW_UPS:
        head, tail = phrasing.split("{name}")
        if question.startswith(head) and question.endswith(tail):
            return question[len(head) : len(question) - len(tail)]
    raise AssertionError(f"no phrasing asks {question!r}")


def answer_for(conversations: list[dict], name: str) -> str:
    for c in conversations:
        for question, answer in turns(c):
            if asked_name(question) == name:
                return answer
    raise AssertionError(f"no question about {name}")


def test_bytes_are_deterministic_across_calls_and_hash_seeds(conversations):
    data = conversations_jsonl(conversations)
    assert conversations_jsonl(default_conversations()) == data
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", DIGEST], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_jsonl_is_one_conversation_per_line(conversations):
    lines = conversations_jsonl(conversations).split(b"\n")
    assert lines[-1] == b"" and [orjson.loads(line) for line in lines[:-1]] == conversations


def test_every_conversation_alternates_user_and_assistant(conversations):
    assert 600 <= len(conversations) <= 2000
    for c in conversations:
        assert set(c) == {"messages", "topic", "split"}
        assert c["split"] == ("val" if c["topic"] in VAL_TOPICS else "train")
        roles = [m["role"] for m in c["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        for m in c["messages"]:
            assert m["content"] and m["content"] == m["content"].strip()
            assert m["content"].isascii()


def test_every_conversation_fits_the_block_in_the_corpus_characters(conversations):
    vocab = set(default_corpus_text())
    for c in conversations:
        text = rendered(c)
        assert len(text) <= convo.MAX_RENDERED == 128, text
        assert set(text) <= vocab, set(text) - vocab
        assert all(a.endswith(".") and len(a) >= convo.MIN_ANSWER for _, a in turns(c))


def test_answers_are_docstring_summaries_without_signature_lines(conversations):
    assert "absolute value" in answer_for(conversations, "abs")
    assert answer_for(conversations, "math.sqrt") == "Return the square root of x."
    assert (
        answer_for(conversations, "str.upper")
        == "Return a copy of the string converted to uppercase."
    )
    # math.fmod's summary names fmod( mid-sentence: a prose line, not a signature
    assert answer_for(conversations, "math.fmod").startswith("Return fmod(x, y)")
    # int's docstring opens with `int([x]) -> integer` lines, sorted's does not
    assert answer_for(conversations, "int").startswith("Convert a number or string")
    for c in conversations:
        for question, answer in turns(c):
            name = asked_name(question)
            assert not answer.startswith((f"{name}(", f"{name.rsplit('.', 1)[-1]}(")), answer


def test_summary_and_cut_on_known_docstrings():
    doc = "S.index(sub[, start[, end]]) -> int\n\nReturn the lowest index in S where\nsub is found."
    assert convo._summary(doc) == "Return the lowest index in S where sub is found."
    assert (
        convo._summary(">>> f(1)\n2\n\nDo it `twice` \u2014 caf\u00e9.") == "Do it 'twice' - cafe."
    )
    text = "Return the index where to insert item x in list a, assuming a is sorted."
    assert convo._cut(text, 60) == "Return the index where to insert item x in list a."
    assert convo._cut("Test it. Returns False for broken links.", 70) == (
        "Test it. Returns False for broken links."
    )
    assert convo._cut("Pop and return the current smallest value and add", 40) == (
        "Pop and return the current smallest."
    )


def test_topics_val_topics_and_two_turn_share(conversations):
    counts = Counter(c["topic"] for c in conversations)
    assert {"builtins", "str", "math", "os.path"} <= set(counts)
    assert all(topic in counts for topic in VAL_TOPICS)
    share = sum(counts[t] for t in VAL_TOPICS) / len(conversations)
    assert 0.05 <= share <= 0.25
    two_turn = [c for c in conversations if len(c["messages"]) == 4]
    assert len(two_turn) >= 20
    assert all(turns(c)[1][0].startswith(("And ", "What about ")) for c in two_turn)


def test_ensure_default_conversations_writes_once(tmp_path, conversations):
    path = tmp_path / "sub" / "c.jsonl"
    assert ensure_default_conversations(path) == path
    assert path.read_bytes() == conversations_jsonl(conversations)
    path.write_bytes(b"edited\n")
    assert ensure_default_conversations(path) == path
    assert path.read_bytes() == b"edited\n"
