"""prepare-chat: conversations to ids, masks and starts; the split by topic; a base's
vocabulary kept; cutting, skipping and unknown characters; the batches a chat set serves."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ckpt, train

from yocto_fn import cli
from yocto_fn.bench.measure import assistant_loss
from yocto_fn.core import models
from yocto_fn.core.config import ModelConfig
from yocto_fn.data import (
    VAL_TOPICS,
    Dataset,
    PrepareChatConfig,
    default_conversations,
    prepare_chat,
)
from yocto_fn.formats import chat_template
from yocto_fn.formats.tokenizer import CharTokenizer


def talk(question: str, answer: str, *more: str, system: str | None = None, **extra) -> dict:
    """A conversation line: system?, then user/assistant pairs."""
    texts = [question, answer, *more]
    roles = ["user", "assistant"] * len(texts)
    messages = [{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)]
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": head + messages, **extra}


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def convos(n: int = 40, topics: int = 8) -> list[dict]:
    """Conversations in characters every corpus has (no "?": a base of the default text's
    first 40k characters lacks it)."""
    return [talk(f"What is {i}.", f"It is {i}, said {'ab'[i % 2]}.", topic=f"t{i % topics}")
            for i in range(n)]  # fmt: skip


def prepared(tmp_path: Path, lines: list[dict], *flags: str) -> tuple[Path, dict]:
    out = tmp_path / "chat"
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    assert cli.main(["prepare-chat", "--jsonl-path", str(path), "--out-dir", str(out), *flags]) == 0
    return out, json.loads((out / "meta.json").read_text())


def test_each_row_is_one_conversation_with_its_mask_on_the_reply_targets(tmp_path):
    out, meta = prepared(tmp_path, convos())
    ds = Dataset(out)
    tok = CharTokenizer(json.loads((out / "vocab.json").read_text()))
    assert meta["chat"].items() >= chat_template.record(None).items()
    x, y, w = ds.get_batch("train", 16, 60, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == w.shape == (16, 60) and w.dtype == torch.float32
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in range(16):
        text = tok.decode(x[row].tolist())
        assert text.startswith("User: What is "), text
        question = text.split("\n")[0].removeprefix("User: What is ").removesuffix(".")
        counted = tok.decode(y[row][w[row] == 1].tolist())
        reply = chat_template.clean(f" It is {question}, said {'ab'[int(question) % 2]}.")
        assert counted == f" {reply}\n\n", (text, counted)


def test_every_conversation_counts_its_own_reply_tokens_and_nothing_after(tmp_path, monkeypatch):
    """Each conversation in a row of its own (the last one of the split too, whose row runs
    past the split's end): the row's weights sum to its reply tokens after the first."""
    out, _ = prepared(tmp_path, convos())
    ds = Dataset(out)
    starts, mask = ds.starts["val"], np.asarray(ds.masks["val"])
    ends = [*starts[1:], len(mask)]
    expected = [int(mask[a + 1 : b].sum()) for a, b in zip(starts, ends, strict=True)]
    monkeypatch.setattr(torch, "randint", lambda n, size, generator: torch.arange(n))
    _, _, w = ds.get_batch("val", len(starts), 60, torch.Generator())
    assert w.sum(1).long().tolist() == expected and min(expected) > 0


def test_topics_stay_in_one_split_and_the_seed_fixes_it(tmp_path):
    lines = convos(60, topics=12)
    out, meta = prepared(tmp_path, lines, "--split-seed", "3")
    tok = CharTokenizer(json.loads((out / "vocab.json").read_text()))
    val = tok.decode(np.fromfile(out / "val.bin", dtype=meta["dtype"]).tolist())
    val_ids = {int(q.split(".")[0]) for q in val.split("What is ")[1:]}
    assert val_ids and all({j for j in range(60) if j % 12 == i % 12} <= val_ids for i in val_ids)
    for seed, same in (("3", True), ("4", False)):
        again = tmp_path / f"seed{seed}"
        again.mkdir()
        redone, _ = prepared(again, lines, "--split-seed", seed)
        assert ((redone / "val.bin").read_bytes() == (out / "val.bin").read_bytes()) == same


def test_a_pinned_split_wins(tmp_path):
    lines = [talk(f"q{i}?", f"a{i}.", split="val" if i < 3 else "train") for i in range(20)]
    _, meta = prepared(tmp_path, lines)
    assert meta["chat"]["splits"]["val"]["conversations"] == 3


def test_too_long_conversations_are_cut_to_whole_turns_or_skipped(tmp_path):
    long_reply = "x" * 80
    lines = [*convos(20), talk("Hi?", "Short.", "And more?", long_reply),
             talk("Long?", long_reply * 2)]  # fmt: skip
    out, meta = prepared(tmp_path, lines, "--block-size", "64")
    assert (meta["chat"]["cut"], meta["chat"]["skipped"]) == (1, 1)
    assert max(meta["chat"]["splits"][s]["longest"] for s in ("train", "val")) <= 65
    tok = CharTokenizer(json.loads((out / "vocab.json").read_text()))
    text = "".join(tok.decode(np.fromfile(out / f"{s}.bin", dtype="uint8").tolist())
                   for s in ("train", "val"))  # fmt: skip
    assert "User: Hi?\nAssistant: Short.\n\n" in text and "And more?" not in text
    skipped_dir = tmp_path / "s"
    skipped_dir.mkdir()
    _, meta = prepared(skipped_dir, lines, "--block-size", "64", "--too-long", "skip")
    assert (meta["chat"]["cut"], meta["chat"]["skipped"]) == (0, 2)


def test_a_shared_system_prompt_is_recorded_and_a_varied_one_is_not(tmp_path):
    lines = [talk(f"q{i}?", f"a{i}.", system="Answer briefly.") for i in range(20)]
    _, meta = prepared(tmp_path, lines)
    assert meta["chat"]["system_prompt"] == "Answer briefly."
    other = tmp_path / "o"
    other.mkdir()
    lines[0] = talk("q?", "a.", system="Something else.")
    _, meta = prepared(other, lines)
    assert (meta["chat"]["system_prompt"], meta["chat"]["system_prompts"]) == (None, "varied")


@pytest.fixture(scope="module")
def base_run(char_dir, tmp_path_factory) -> Path:
    """A tiny char model of real text: the base a fine-tune starts from."""
    run = tmp_path_factory.mktemp("base")
    assert train(char_dir, run, "--max-iters", "2", "--block-size", "64") == 0
    return run / "latest.pt"


def test_vocab_from_a_base_keeps_its_ids_and_names_unknown_characters(base_run, tmp_path):
    base = ckpt(base_run)["tokenizer"]["chars"]
    out, meta = prepared(tmp_path, convos(), "--vocab-from", str(base_run))
    assert json.loads((out / "vocab.json").read_text()) == base
    assert meta["vocab_from"] == str(base_run)
    strange = [*convos(), talk("Snow\u2603.", "Man\u2603.")]
    path = write_jsonl(tmp_path / "s.jsonl", strange)
    with pytest.raises(Exception, match=r"s.jsonl:41: 1 character\(s\) not in the vocabulary"):
        prepare_chat(PrepareChatConfig(jsonl_path=(path,), out_dir=tmp_path / "no",
                                       vocab_from=base_run))  # fmt: skip
    assert not (tmp_path / "no").exists()
    for how, expect in (("drop", "Snow."), ("replace", "Snow .")):
        cfg = PrepareChatConfig(jsonl_path=(path,), out_dir=tmp_path / how, vocab_from=base_run,
                                unknown_chars=how)  # fmt: skip
        meta = prepare_chat(cfg)
        text = "".join(CharTokenizer(base).decode(np.fromfile(tmp_path / how / f"{s}.bin",
                                                              dtype=meta["dtype"]).tolist())
                       for s in ("train", "val"))  # fmt: skip
        assert f"User: {expect}\n" in text and meta["chat"]["changed_chars"] == 1


def test_a_fine_tune_on_chat_data_records_the_template(base_run, tmp_path):
    lines = [talk(f"q{i}.", f"a{i}.", system="Be brief.") for i in range(30)]
    out, _ = prepared(tmp_path, lines, "--vocab-from", str(base_run), "--block-size", "64")
    run = tmp_path / "sft"
    flags = ("--init-from", str(base_run), "--max-iters", "2", "--block-size", "64")
    assert train(out, run, *flags) == 0
    saved = ckpt(run / "latest.pt")
    assert saved["chat"] == chat_template.record("Be brief.")
    meta = json.loads((run / "run_meta.json").read_text())
    assert meta["data"]["loss_over"] == "assistant tokens"


def test_the_embedded_set_holds_out_exactly_its_validation_topics(tmp_path, monkeypatch):
    """No --jsonl-path: the embedded set, from the default corpus's vocabulary, with the
    conversations of VAL_TOPICS in validation and no others, whatever the split flags say."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["prepare-char"]) == 0
    held = sum(c["topic"] in VAL_TOPICS for c in default_conversations())
    for seed in ("1337", "5"):
        argv = ["prepare-chat", "--vocab-from", "data/char", "--split-seed", seed,
                "--val-fraction", "0.3", "--out-dir", f"chat{seed}"]  # fmt: skip
        assert cli.main(argv) == 0
        splits = json.loads(Path(f"chat{seed}/meta.json").read_text())["chat"]["splits"]
        assert splits["val"]["conversations"] == held
        assert splits["train"]["conversations"] == len(default_conversations()) - held
    val = Path("chat5/val.bin").read_bytes() == Path("chat1337/val.bin").read_bytes()
    assert val and Path("data/default_conversations.jsonl").is_file()


def test_the_assistant_loss_weighs_every_reply_token_of_the_split_once(tmp_path):
    """`bench.measure.assistant_loss` in batches of 3 (the last one short) against a loop
    over the conversations one by one, summing each reply token's cross-entropy by hand."""
    lines = [talk(f"q{i}?", "a" * (1 + i % 5) + ".", split="val" if i < 7 else "train")
             for i in range(20)]  # fmt: skip
    out, meta = prepared(tmp_path, lines, "--block-size", "32")
    ds = Dataset(out)
    cfg = ModelConfig(vocab_size=meta["vocab_size"], block_size=32, n_layer=1, n_head=2,
                      n_embd=16)  # fmt: skip
    model = models.get("gpt")
    p = model.init(cfg, 0)
    total, tokens = 0.0, 0.0
    for i in range(len(ds.starts["val"])):
        x, y, w = ds.chat_rows("val", np.array([i]), 32)
        logp = torch.log_softmax(model.forward(p, x, cfg)[0], -1)
        total -= (logp.gather(-1, y[..., None])[..., 0] * w).sum().item()
        tokens += w.sum().item()
    assert tokens == sum(5 + i % 5 for i in range(7))  # " a..a." and the blank line
    assert assistant_loss(model, p, cfg, ds, rows=3) == pytest.approx(total / tokens, rel=1e-5)
