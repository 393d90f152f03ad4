"""Data preparation: round trips, splits, cleaning, batches and every bad input."""

import os
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from conftest import real_text

from yocto_fn import cli, data
from yocto_fn.data import CorpusOptions, Dataset, char, split
from yocto_fn.data import text as corpus_text
from yocto_fn.formats.tokenizer import CharTokenizer, HFTokenizer, load, train_bpe, train_word

PARAGRAPHS = [
    "The unexamined life is not worth living.",
    "Knowledge is a justified\ntrue belief, or so it was said.",
    "Wonder is the beginning of wisdom.",
    "No man ever steps in the same river twice.",
    "The only thing I know is that I know nothing.",
    "Happiness depends upon ourselves.",
]


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(real_text()[:60_000], encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(PARAGRAPHS * 4) + "\n", encoding="utf-8")
    return path


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_char_prepare_round_trips_the_corpus(tmp_path, corpus):
    out = tmp_path / "char"
    assert run_cli("prepare-char", "--text_path", str(corpus), "--out-dir", str(out)) == 0
    ds = Dataset(out)
    tok = load(out / "vocab.json")
    text = corpus.read_text(encoding="utf-8")
    joined = np.concatenate([ds.splits["train"], ds.splits["val"]])
    assert tok.decode(joined.tolist()) == text
    assert ds.meta["vocab_size"] == len(set(text)) and ds.meta["dtype"] == "uint8"
    assert abs(ds.meta["val_tokens"] / len(text) - 0.1) < 0.02
    assert ds.meta["corpus_sha256"] and ds.meta["sources"] == [str(corpus)]


def test_char_tokenizer_round_trip_and_unknown_characters():
    text = "naïve café, 42!\n"
    tok = CharTokenizer(sorted(set(text)))
    assert tok.decode(tok.encode(text)) == text
    vocab, local = char.chunk_codes(text)
    assert "".join(chr(c) for c in vocab) == "".join(tok.chars)
    assert tok.decode(local.tolist()) == text
    with pytest.raises(Exception, match="'Z'"):
        tok.encode("Zebra")


def test_bpe_round_trips_any_text_including_emoji():
    tok = train_bpe([real_text()[:50_000]], vocab_size=400)
    for text in ["Grüße aus Köln — naïve café", "emoji 👋🏽😀 and 漢字\n\ttab", "  spaces  "]:
        assert tok.decode(tok.encode(text)) == text
    reloaded = HFTokenizer.__new__(HFTokenizer)
    reloaded.__init__(tok.tok)
    assert reloaded.encode("wisdom") == tok.encode("wisdom")


def test_word_backend_maps_unseen_words_to_unk():
    tok = train_word(["the cat sat on the mat . the cat ."], vocab_size=50)
    ids = tok.encode("the zebra sat")
    assert ids[1] == tok.unk_id and ids[0] != tok.unk_id and ids[2] != tok.unk_id
    assert tok.decode(tok.encode("the cat sat .")) == "the cat sat."


def test_bos_eos_frame_each_paragraph(tmp_path, small_corpus):
    out = tmp_path / "tok"
    args = ["--text-path", str(small_corpus), "--out-dir", str(out), "--vocab-size", "300"]
    assert run_cli("prepare-tokenizer", *args) == 0
    ds, tok = Dataset(out), load(out / "tokenizer.json")
    ids = ds.splits["train"].tolist()
    bos = [i for i, t in enumerate(ids) if t == tok.bos_id]
    eos = [i for i, t in enumerate(ids) if t == tok.eos_id]
    assert len(bos) == len(eos) > 0 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    texts = [tok.decode(ids[b + 1 : e]) for b, e in zip(bos, eos, strict=True)]
    assert texts == (PARAGRAPHS * 4)[: len(texts)]
    assert run_cli("prepare-tokenizer", *args, "--no_add_bos_eos") == 0
    plain = Dataset(out).splits["train"].tolist()
    assert tok.bos_id not in plain and tok.eos_id not in plain


def test_random_split_is_deterministic_per_seed(tmp_path, corpus):
    def split(seed: int, name: str) -> dict[str, bytes]:
        out = tmp_path / name
        args = ["--text-path", str(corpus), "--out-dir", str(out), "--random-split"]
        assert run_cli("prepare-char", *args, "--split-seed", str(seed)) == 0
        return {k: v for k, v in _bytes(out).items() if k.endswith(".bin")}

    a, b, c = split(1, "a"), split(1, "b"), split(2, "c")
    contiguous = tmp_path / "d"
    assert run_cli("prepare-char", "--text-path", str(corpus), "--out-dir", str(contiguous)) == 0
    assert a == b
    assert a["val.bin"] != c["val.bin"]
    assert a["val.bin"] != (contiguous / "val.bin").read_bytes()
    total = sum(len(v) for v in a.values())
    assert total == len(corpus.read_text(encoding="utf-8"))


def test_cleaning_options():
    raw = (
        "\u201cQuote\u201d \u2014 it\u2019s\u2026\x07 done\r\n\n\n\nNext\u00a0\u200bline  \t x  \n"
    )
    clean = data.sanitize_basic(raw)
    assert clean == '"Quote" - it\'s... done\n\n\n\nNext line  \t x  \n'
    assert data.collapse_whitespace(clean) == '"Quote" - it\'s... done\n\nNext line x\n'
    opts = CorpusOptions(lowercase=True)
    assert data.clean("MiXeD Case", opts) == "mixed case"
    assert data.clean(raw, CorpusOptions()) == raw


def test_default_corpus_is_materialised_and_used(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("prepare-char") == 0
    assert (tmp_path / "data" / "default.txt").stat().st_size > 400_000
    assert "embedded default corpus" in capsys.readouterr().out
    meta = orjson.loads((tmp_path / "data" / "char" / "meta.json").read_bytes())
    assert meta["mode"] == "char" and meta["train_tokens"] > 400_000


def test_get_batch_is_deterministic_and_shifted(tmp_path, corpus):
    out = tmp_path / "char"
    assert run_cli("prepare-char", "--text-path", str(corpus), "--out-dir", str(out)) == 0
    ds = Dataset(out)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x1, y1 = ds.get_batch("train", 4, 32, g1)
    state = g1.get_state()
    x2, y2 = ds.get_batch("train", 4, 32, g2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.dtype == torch.int64 and x1.shape == (4, 32)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(
        ds.get_batch("train", 4, 32, resumed)[0], ds.get_batch("train", 4, 32, g1)[0]
    )
    train = np.asarray(ds.splits["train"])
    row = x1[0].numpy()
    starts = [i for i in range(len(train) - 32) if (train[i : i + 32] == row).all()]
    assert starts
    with pytest.raises(Exception, match="block-size"):
        ds.get_batch("val", 1, len(ds.splits["val"]), g1)


BAD_INPUTS = {
    "missing file": ["prepare-char", "--text-path", "{tmp}/nope.txt"],
    "dir without txt": ["prepare-char", "--all-txt-in-dir", "--text-dir", "{tmp}/empty_dir"],
    "empty corpus": ["prepare-char", "--text-path", "{tmp}/blank.txt"],
    "too small for val": ["prepare-tokenizer", "--text-path", "{tmp}/tiny.txt"],
    "vocab below bytes": ["prepare-tokenizer", "--text-path", "{corpus}", "--vocab-size", "100"],
    "unknown backend": ["prepare-tokenizer", "--text-path", "{corpus}", "--backend", "wordpiece"],
    "bad val fraction": ["prepare-char", "--text-path", "{corpus}", "--val-fraction", "1.5"],
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_touches_nothing(case, tmp_path, corpus, capsys):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "blank.txt").write_text("  \n\n \t\n")
    (tmp_path / "tiny.txt").write_text("hello")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"old")
    (out / "meta.json").write_bytes(b"{}")
    before = _bytes(out)
    argv = [a.format(tmp=tmp_path, corpus=corpus) for a in BAD_INPUTS[case]]
    capsys.readouterr()
    assert run_cli(*argv, "--out-dir", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    assert _bytes(out) == before


def test_out_dir_that_is_a_file_is_refused(tmp_path, corpus, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert run_cli("prepare-char", "--text-path", str(corpus), "--out-dir", str(target)) == 2
    assert "existing file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_cli_process_exit_code_and_stderr(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "cli.py"), "prepare-char", "--text_path", "nope.txt"],
        capture_output=True, text=True, cwd=tmp_path, env=os.environ | {"COLUMNS": "80"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: text file not found: nope.txt"
    assert not (tmp_path / "data" / "char").exists()


def test_pieces_cover_the_text_and_cut_long_paragraphs(monkeypatch):
    monkeypatch.setattr(split, "MAX_CHUNK_CHARS", 50)
    text = "short one\n\n" + "word " * 40 + "\n \n\n" + "x" * 120 + "\n\nend"
    ps = split.pieces(text, offset=7)
    assert "".join(text[a - 7 : b - 7] for a, b in zip(ps.start, ps.end, strict=True)) == text
    assert (ps.start[1:] == ps.end[:-1]).all()
    assert (ps.content_end - ps.start <= 50).all()
    assert ps.opens.sum() == ps.closes.sum() == 4  # four paragraphs, some in several pieces
    assert len(ps) > 4


@pytest.mark.parametrize("random_split", [False, True])
def test_many_small_chunks_still_cover_the_corpus(tmp_path, corpus, monkeypatch, random_split):
    """Streaming in tiny chunks (cut inside paragraphs too) loses and duplicates nothing."""
    monkeypatch.setattr(corpus_text, "CHUNK_BYTES", 997)
    flags = ["--random-split"] if random_split else []
    out = tmp_path / "char"
    assert run_cli("prepare-char", "--text-path", str(corpus), "--out-dir", str(out), *flags) == 0
    text = corpus.read_text(encoding="utf-8")
    ds, tok = Dataset(out), load(out / "vocab.json")
    train, val = (tok.decode(ds.splits[s].tolist()) for s in ("train", "val"))
    assert tok.chars == sorted(set(text))
    assert abs(len(val) / len(text) - 0.1) < 0.02
    if random_split:
        assert sorted(train + val) == sorted(text) and val not in text
    else:
        assert train + val == text
    out = tmp_path / "tok"
    args = ["--text-path", str(corpus), "--out-dir", str(out), "--vocab-size", "300", *flags]
    assert run_cli("prepare-tokenizer", *args) == 0
    ds, tok = Dataset(out), load(out / "tokenizer.json")
    ids = np.concatenate([ds.splits["train"], ds.splits["val"]]).tolist()
    marks = [t for t in ids if t in (tok.bos_id, tok.eos_id)]
    assert marks == [tok.bos_id, tok.eos_id] * (len(marks) // 2)  # strictly alternating
    paragraphs = len(split._PARAGRAPH_BREAK.findall(text.strip())) + 1
    assert paragraphs <= len(marks) // 2 <= paragraphs + len(text.encode()) // 997 + 1


def test_multiple_files_are_joined_in_name_order(tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    (src / "b.txt").write_text("second file\n" * 30)
    (src / "a.txt").write_text("first file\n" * 30)
    (src / "skip.md").write_text("not text")
    out = tmp_path / "out"
    assert (
        run_cli("prepare-char", "--all_txt_in_dir", "--text_dir", str(src), "--out-dir", str(out))
        == 0
    )
    ds = Dataset(out)
    tok = load(out / "vocab.json")
    text = tok.decode(np.concatenate([ds.splits["train"], ds.splits["val"]]).tolist())
    assert text == "first file\n" * 30 + "\n\n" + "second file\n" * 30
    assert ds.meta["sources"] == [str(src / "a.txt"), str(src / "b.txt")]


RAW = "\u201cQuote\u201d \u2014 It\u2019s\u2026\x07 DONE\r\n\n\n\nNext\u00a0\u200bLine  \t x  \n\n"


@pytest.mark.parametrize(
    "flags, want",
    [
        ([], RAW),
        (["--sanitize-chars", "basic"], '"Quote" - It\'s... DONE\n\n\n\nNext Line  \t x  \n\n'),
        (["--sanitize-chars", "basic", "--collapse-whitespace"],
         '"Quote" - It\'s... DONE\n\nNext Line x\n\n'),
        (["--sanitize_chars", "basic", "--collapse_whitespace", "--lowercase"],
         '"quote" - it\'s... done\n\nnext line x\n\n'),
    ],
)  # fmt: skip
def test_cleaning_flags_reach_the_prepared_text(tmp_path, flags, want):
    """What prepare-char encodes is the hand-cleaned text, flag by flag, through the CLI."""
    corpus = tmp_path / "raw.txt"
    corpus.write_bytes((RAW * 300).encode())
    out = tmp_path / "char"
    assert run_cli("prepare-char", "--text-path", str(corpus), "--out-dir", str(out), *flags) == 0
    ds, tok = Dataset(out), load(out / "vocab.json")
    joined = np.concatenate([ds.splits["train"], ds.splits["val"]])
    assert tok.decode(joined.tolist()) == want * 300
