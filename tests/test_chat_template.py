"""The chat template: the render and its loss mask, written out by hand; the prompts of
`chat` and `serve` against the training render; cutting to whole turns."""

import string

import pytest

from yocto_fn.formats import chat_template
from yocto_fn.formats.tokenizer import CharTokenizer, train_bpe
from yocto_fn.generate.chat import Conversation
from yocto_fn.generate.serve_api import Message, conversation

CHARS = CharTokenizer(sorted(set(string.printable)))
TALK = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello. User: is a label here."},
    {"role": "user", "content": "And?"},
    {"role": "assistant", "content": "Done."},
]
# The render of TALK, cut where the mask changes: (text, mask bit).
BY_HAND = [
    ("System: Be brief.\nUser: Hi\nAssistant:", 0),
    (" Hello. User: is a label here.\n\n", 1),
    ("User: And?\nAssistant:", 0),
    (" Done.\n\n", 1),
]


def test_the_mask_marks_exactly_each_reply_and_its_end_of_turn():
    ids, mask = chat_template.render(CHARS, TALK)
    assert CHARS.decode(ids) == "".join(text for text, _ in BY_HAND)
    assert mask == [bit for text, bit in BY_HAND for _ in text]


@pytest.fixture(scope="module")
def bpe():
    texts = ["System: User: Assistant: Hello. Done. Be brief. And? Hi is a label here."] * 30
    return train_bpe(texts, 300)


def test_a_bpe_reply_ends_with_eos_and_its_mask_spans_the_reply(bpe):
    ids, mask = chat_template.render(bpe, TALK)
    assert ids[0] == bpe.bos_id and mask[0] == 0
    spans, current = [], []
    for i, bit in zip(ids, mask, strict=True):
        if bit:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    assert [span[-1] for span in spans] == [bpe.eos_id] * 2
    assert [bpe.decode(span) for span in spans] == [" Hello. User: is a label here.", " Done."]
    prompt_part = [i for i, bit in zip(ids, mask, strict=True) if not bit]
    assert (
        bpe.decode(prompt_part) == "System: Be brief.\nUser: Hi\nAssistant:User: And?\nAssistant:"
    )


def test_blank_lines_inside_a_message_fold_so_only_the_end_of_turn_is_one():
    messages = [{"role": "user", "content": "a\n\n\nb "},
                {"role": "assistant", "content": "c\r\n\r\nd"}]  # fmt: skip
    ids, _ = chat_template.render(CHARS, messages)
    assert CHARS.decode(ids) == "User: a\nb\nAssistant: c\nd\n\n"


def test_the_prompt_is_the_training_render_of_the_turns_that_fit():
    asked = [*TALK, {"role": "user", "content": "Last?"}]
    full = chat_template.render(CHARS, asked, ask=True).ids
    assert chat_template.prompt(CHARS, asked, budget=len(full)) == full
    budget = len(full) - 1  # the oldest turn has to go, the system message stays
    kept = [TALK[0], *TALK[3:], asked[-1]]
    assert (
        chat_template.prompt(CHARS, asked, budget)
        == chat_template.render(CHARS, kept, ask=True).ids
    )
    assert CHARS.decode(chat_template.prompt(CHARS, asked, budget)) == (
        "System: Be brief.\nUser: And?\nAssistant: Done.\n\nUser: Last?\nAssistant:"
    )


def test_chat_and_serve_ask_in_the_layout_of_training():
    """The same conversation through chat's Conversation and serve's message handling gives
    the ids of the training render with `Assistant:` appended."""
    convo = Conversation(CHARS, "Be brief.", budget=500)
    convo.add("Hi", "Hello. User: is a label here.")
    convo.add("And?", "Done.")
    asked = [*TALK, {"role": "user", "content": "Last?"}]
    training = chat_template.render(CHARS, asked, ask=True).ids
    assert convo.prompt_ids("Last?") == training
    api = [Message(role=m["role"], content=m["content"]) for m in asked]
    assert chat_template.prompt(CHARS, conversation(api, None), 500) == training
    developer = [Message(role="developer", content="Be brief."), *api[1:]]
    assert chat_template.prompt(CHARS, conversation(developer, "ignored"), 500) == training
    assert conversation(api[1:], "Be brief.") == asked


def test_fit_keeps_leading_whole_turns_that_end_on_a_reply():
    full = len(chat_template.render(CHARS, TALK).ids)
    first = chat_template.render(CHARS, TALK[:3]).ids
    assert chat_template.fit(CHARS, TALK, full) == TALK
    assert chat_template.fit(CHARS, TALK, full - 1) == TALK[:3]
    assert chat_template.fit(CHARS, TALK, len(first)) == TALK[:3]
    assert chat_template.fit(CHARS, TALK, len(first) - 1) is None


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([], "no messages"),
        ("hi", "no messages"),
        ([{"role": "user"}], "not an object with role and content"),
        ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
        ([{"role": "user", "content": " \n "}], "has empty content"),
        ([{"role": "system", "content": "x"}], "no user message"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
         "system message after the conversation started"),
    ],
)  # fmt: skip
def test_problem_names_what_is_wrong(messages, why):
    assert why in chat_template.problem(messages)


def test_a_later_template_version_is_refused_by_name():
    chat_template.check_record(None, "x.pt")
    chat_template.check_record(chat_template.record(None), "x.pt")
    with pytest.raises(Exception, match="yocto-chat version 2"):
        chat_template.check_record({"template": "yocto-chat", "version": 2}, "x.pt")
