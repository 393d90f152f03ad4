"""Chat: where a reply ends, the visible-character rule, streaming that never shows what is
cut, and a model trained like `make demo`'s answering two questions."""

import io
import string
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from yocto_fn import models
from yocto_fn.config import ChatConfig
from yocto_fn.formats import chat_template
from yocto_fn.formats.tokenizer import CharTokenizer, train_bpe
from yocto_fn.generate import chat
from yocto_fn.generate.loading import Loaded, load_model
from yocto_fn.generate.sample import generate

CHARS = sorted(set(string.ascii_letters + string.digits + string.punctuation + " \n"))


@pytest.mark.parametrize(
    ("text", "end"),
    [
        ("Hello", None),
        ("Hello\n", None),
        ("Hello\nworld", None),
        ("Hello\n\nmore", 5),
        ("Hi\nUser: next", 2),
        ("Hi\nSystem: next", 2),
        ("Hi\nAssistant: again", 2),
        ("Hi\nUsers: are people", None),
        ("Hi, User: you", None),
        ("a\nb\n\nc\nUser:", 3),
    ],
)
def test_reply_end_is_the_first_blank_line_or_turn_marker(text, end):
    assert chat.reply_end(text) == end


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        (" Hi\nthere\n\nUser: x", "Hi\nthere"),
        ("Hello\nUs", "Hello"),
        ("Hello \n", "Hello"),
        ("Hello\nUsage", "Hello\nUsage"),
        ("ok\ufffd", "ok"),
        (" ", ""),
    ],
)
def test_reply_text_holds_back_a_tail_that_may_become_an_end(text, reply):
    assert chat.reply_text(text) == reply


@given(st.text(alphabet="ab \nUserSystmAi:", max_size=40))
@settings(max_examples=300, deadline=None)
def test_reply_text_only_grows_as_the_text_grows(text):
    """The property streaming relies on: what is shown once stays the start of the reply."""
    replies = [chat.reply_text(text[:i]) for i in range(len(text) + 1)]
    assert all(b.startswith(a) for a, b in zip(replies, replies[1:], strict=False))


def test_until_a_visible_character_only_one_leading_run_of_spaces_may_come():
    tok = CharTokenizer(CHARS)
    tables = chat.reply_masks(tok)
    (newline,), (space,), (x,) = tok.encode("\n"), tok.encode(" "), tok.encode("x")
    opening, after_space = chat.banned("", tables), chat.banned(" ", tables)
    assert opening[newline] and not opening[space] and not opening[x]
    assert after_space[newline] and after_space[space] and not after_space[x]
    assert chat.banned(" x", tables) is None


def test_an_eos_that_decodes_to_text_still_may_not_open_a_reply():
    tok = CharTokenizer(CHARS)
    tok.eos_id = tok.encode("#")[0]
    assert chat.banned("", chat.reply_masks(tok))[tok.eos_id]


def test_generate_never_picks_a_banned_token_and_stays_seeded():
    cfg = tiny_config()
    model = models.get("gpt")
    params = model.init(cfg, 0)
    low = torch.arange(cfg.vocab_size) < cfg.vocab_size // 2

    def run(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        new = generate(model, params, cfg, [1, 2], max_new_tokens=60, generator=gen,
                       ban=lambda new: low[None])  # fmt: skip
        return new[0].tolist()

    tokens = run(0)
    assert min(tokens) >= cfg.vocab_size // 2
    assert run(0) == tokens and run(1) != tokens


def test_generate_stops_when_finished_says_so():
    cfg = tiny_config()
    model = models.get("gpt")
    params = model.init(cfg, 0)
    new = generate(model, params, cfg, [1], max_new_tokens=20, temperature=0,
                   finished=lambda new: torch.tensor([new.shape[1] >= 3]))  # fmt: skip
    assert new.shape == (1, 3)


def fake_loaded(tok, ranking: list[int] | None = None, script: list[int] | None = None) -> Loaded:
    """A tiny model forced to prefer the tokens of `ranking` in that order at every step, or
    to pick `script[i]` at step i."""
    cfg = tiny_config(vocab_size=tok.vocab_size, block_size=64)
    model = models.get("gpt")
    steps = []

    def forward(params, idx, cfg, **kwargs):
        logits, cache = model.forward(params, idx, cfg, **kwargs)
        forced = torch.zeros_like(logits[:, -1])
        if script is not None:
            forced[:, script[len(steps)]] = 1e9
        else:
            for rank, token in enumerate(ranking):
                forced[:, token] = 1e6 * (len(ranking) - rank)
        steps.append(idx.shape[1])
        return torch.cat([logits[:, :-1], forced[:, None] + logits[:, -1:]], dim=1), cache

    return Loaded(model._replace(forward=forward), model.init(cfg, 0), cfg, tok)


def chat_with(loaded: Loaded, monkeypatch, questions: str, **opts) -> tuple[str, list]:
    """The text `chat.run` writes for `questions` and the (user, reply) turns it kept."""
    monkeypatch.setattr(chat, "load_model", lambda o: loaded)
    kept = []
    monkeypatch.setattr(chat.Conversation, "add", lambda self, u, r: kept.append((u, r)))
    out = []
    cfg = ChatConfig(ckpt=Path("unused.pt"), temperature=0, **opts)
    chat.run(cfg, stdin=io.StringIO(questions), write=out.append)
    return "".join(out), kept


def test_a_model_that_would_end_at_once_still_answers_in_char_mode(monkeypatch):
    """Preferring newline, then space, then `x`: the first pick may be a space but no newline,
    the second must be visible, then the blank line ends the reply."""
    tok = CharTokenizer(CHARS)
    ranking = tok.encode("\n x")
    out, kept = chat_with(fake_loaded(tok, ranking), monkeypatch, "hi\n", max_new_tokens=20)
    assert out == "Assistant: x\n"
    assert kept == [("hi", "x")]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(["What is a list? A list is a sequence.\n\nUser: ok\n"] * 20, 300)


def test_a_model_that_would_end_at_once_still_answers_in_bpe_mode(bpe, monkeypatch):
    """Preferring <eos>, then a newline, then a space, then `ok`: neither <eos> nor the
    newline may open the reply, a space may, then only a visible token; then <eos> ends it."""
    (newline,), (space,) = bpe.encode("\n"), bpe.encode(" ")
    ranking = [bpe.eos_id, newline, space, *bpe.encode("ok")[:1]]
    out, kept = chat_with(fake_loaded(bpe, ranking), monkeypatch, "hi\n", max_new_tokens=20)
    assert out == f"Assistant: {bpe.decode(ranking[-1:])}\n"
    assert kept == [("hi", bpe.decode(ranking[-1:]))]


def test_a_turn_marker_ends_the_reply_and_is_never_shown(monkeypatch):
    """What the stream wrote is all on the screen: a marker written and then dropped from
    the reply would show in it."""
    tok = CharTokenizer(CHARS)
    script = tok.encode(" ok\nno\nUser: more text")
    loaded = fake_loaded(tok, script=script)
    out, kept = chat_with(loaded, monkeypatch, "hi\n", max_new_tokens=40)
    assert out == "Assistant: ok\nno\n"
    assert kept == [("hi", "ok\nno")]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_demo_model_answers_two_questions_and_keeps_both(demo_ckpt, temperature, monkeypatch):
    """No system line and short replies, so that the first turn fits in the second prompt of
    a 128-token context. Greedy, this model would end both replies at once."""
    prompts, convos = [], []
    real_generate = chat.generate

    def spy(model, params, cfg, prompt_ids, **kwargs):
        prompts.append(prompt_ids)
        return real_generate(model, params, cfg, prompt_ids, **kwargs)

    class Recorded(chat.Conversation):
        def __init__(self, *args):
            super().__init__(*args)
            convos.append(self)

    monkeypatch.setattr(chat, "generate", spy)
    monkeypatch.setattr(chat, "Conversation", Recorded)
    writes = []
    opts = ChatConfig(ckpt=demo_ckpt, device="cpu", max_new_tokens=24, system_prompt="",
                      temperature=temperature)  # fmt: skip
    questions = ["What is a list?", "How do I open a file?"]
    assert chat.run(opts, stdin=io.StringIO("\n".join(questions)), write=writes.append) == 2
    starts = [i for i, w in enumerate(writes) if w == "Assistant: "]
    assert len(starts) == 2 and writes[-1] == "\n", writes
    ends = [*starts[1:], len(writes)]
    shown = ["".join(writes[a + 1 : b - 1]) for a, b in zip(starts, ends, strict=True)]
    assert all(reply.strip() for reply in shown), shown
    messages = [{"role": "user", "content": questions[0]},
                {"role": "assistant", "content": shown[0]},
                {"role": "user", "content": questions[1]}]  # fmt: skip
    assert convos[0].messages == messages + [{"role": "assistant", "content": shown[1]}]
    tok = load_model(opts).tok
    assert prompts[1] == chat_template.render(tok, messages, ask=True).ids
    assert tok.decode(prompts[1]) == (
        f"User: {questions[0]}\nAssistant: {shown[0]}\n\nUser: {questions[1]}\nAssistant:"
    )
