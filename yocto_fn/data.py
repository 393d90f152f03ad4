"""Corpus preparation (char and token level) and memory-mapped training batches.

Raw text becomes `train.bin` / `val.bin` (token ids in the smallest unsigned dtype that
fits) plus what is needed to encode and decode (`vocab.json` or `tokenizer.json`) and a
`meta.json` describing the run. Everything is computed and validated before the first byte
is written, and outputs replace earlier ones only once all of them are complete.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import torch
from tqdm import tqdm

from . import fileio
from .errors import UserError
from .tokenizer import (
    SPECIALS,
    CharTokenizer,
    HFTokenizer,
    check_vocab_size,
    train_bpe,
    train_word,
)

DEFAULT_CORPUS = Path("data/default.txt")
MAX_CHUNK_CHARS = 2000  # longest piece a random split moves as one unit
BPE_SAMPLE_CHARS = 20_000_000  # BPE merges are learned on at most this much text
ENCODE_BATCH = 2048  # paragraphs per call into the multi-threaded encoder
CHUNK_BYTES = 1 << 23  # the corpus is decoded, cleaned and encoded this much at a time


@dataclass(frozen=True)
class CorpusOptions:
    """Where the text comes from and how it is cleaned and split."""

    text_path: Path | None = None
    """A .txt file. Without it (and without --all-txt-in-dir) the embedded default corpus."""
    all_txt_in_dir: bool = False
    """Use every .txt file of --text-dir (not recursive, sorted by name)."""
    text_dir: Path | None = None
    """Directory read by --all-txt-in-dir."""
    sanitize_chars: Literal["none", "basic"] = "none"
    """basic: NFKC, curly quotes/dashes/ellipsis to ASCII, drop control chars but \\n and \\t."""
    collapse_whitespace: bool = False
    """Runs of spaces/tabs -> one space, no trailing spaces, at most one blank line."""
    lowercase: bool = False
    """Lowercase the whole corpus."""
    val_fraction: float = 0.1
    """Share of the text (in characters) held out for validation."""
    random_split: bool = False
    """Draw validation paragraphs at random instead of taking the end of the corpus."""
    split_seed: int = 1337
    """Seed of --random-split (same seed, same split)."""


@dataclass(frozen=True)
class PrepareCharConfig(CorpusOptions):
    """Prepare a character-level dataset."""

    out_dir: Path = Path("data/char")
    """Output directory for train.bin, val.bin, vocab.json, meta.json."""


@dataclass(frozen=True)
class PrepareTokenizerConfig(CorpusOptions):
    """Train a tokenizer and prepare a token-level dataset."""

    out_dir: Path = Path("data/token")
    """Output directory for tokenizer.json, train.bin, val.bin, meta.json."""
    vocab_size: int = 8000
    """Tokenizer vocabulary size, special tokens included."""
    backend: Literal["bpe", "word"] = "bpe"
    """bpe: byte-level BPE (nothing is ever unknown); word: word-level with <unk>."""
    add_bos_eos: bool = True
    """Frame every paragraph (text between blank lines) as <bos> ... <eos>."""


# ----------------------------------------------------------------------------- sources


def default_corpus_text() -> str:
    """English prose of Python's own documentation, shipped inside every CPython."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics)) + "\n"


def ensure_default_corpus(path: Path = DEFAULT_CORPUS) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(path, default_corpus_text().encode("utf-8"))
    return path


def source_files(opts: CorpusOptions) -> tuple[list[Path], str]:
    """The input files and a label saying which corpus they are."""
    if opts.all_txt_in_dir:
        if opts.text_dir is None:
            raise UserError("--all-txt-in-dir needs --text-dir DIR")
        if not opts.text_dir.is_dir():
            raise UserError(f"text directory not found: {opts.text_dir}")
        files = sorted(p for p in opts.text_dir.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise UserError(f"no .txt files in {opts.text_dir}; add some or pass --text-path")
        return files, f"{len(files)} .txt file(s) in {opts.text_dir}"
    if opts.text_path is not None:
        if not opts.text_path.is_file():
            raise UserError(f"text file not found: {opts.text_path}")
        return [opts.text_path], str(opts.text_path)
    path = ensure_default_corpus()
    return [path], f"the embedded default corpus (Python documentation topics, {path})"


# ----------------------------------------------------------------------------- cleaning

_ASCII_EQUIVALENTS = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
        "\u2015": "-", "\u2212": "-", "\u2026": "...",
    }
)  # fmt: skip


def sanitize_basic(text: str) -> str:
    """NFKC, typographic punctuation to ASCII, no control or invisible format characters."""
    text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n"))
    text = text.translate(_ASCII_EQUIVALENTS)
    if text.isascii():
        return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf"))


def collapse_whitespace(text: str) -> str:
    """Runs of spaces/tabs -> one space, no spaces before a newline, <= 2 newlines in a row."""
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" +\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def clean(text: str, opts: CorpusOptions) -> str:
    if opts.sanitize_chars == "basic":
        text = sanitize_basic(text)
    if opts.collapse_whitespace:
        text = collapse_whitespace(text)
    if opts.lowercase:
        text = text.lower()
    return text


# ----------------------------------------------------------------------------- streaming


def _chunk_bounds(raw: bytes) -> Iterator[tuple[int, int]]:
    """Byte ranges of about CHUNK_BYTES, cut after a run of blank lines where possible (so
    cleaning a chunk alone gives what cleaning the whole text would), else after a newline,
    else at a UTF-8 character boundary."""
    pos, n = 0, len(raw)
    while pos < n:
        end = min(pos + CHUNK_BYTES, n)
        if end < n:
            blank = raw.rfind(b"\n\n", pos, end)
            line = raw.rfind(b"\n", pos, end)
            if blank > pos:
                end = blank + 2
                while end < n and raw[end] in b"\r\n":
                    end += 1
            elif line > pos:
                end = line + 1
            else:
                while end > pos + 1 and raw[end] & 0xC0 == 0x80:
                    end -= 1
        yield pos, end
        pos = end


@dataclass
class Corpus:
    """The source files' bytes, decoded and cleaned chunk by chunk on demand.

    Only the raw bytes stay in memory: a Python str of the whole text would cost up to 4
    bytes per character, and each pass over the corpus needs one chunk at a time.
    """

    raws: list[bytes]
    files: list[Path]
    label: str
    sha256: str
    opts: CorpusOptions

    @classmethod
    def load(cls, opts: CorpusOptions) -> Corpus:
        files, label = source_files(opts)
        raws, digest = [], hashlib.sha256()
        for path in files:
            raws.append(path.read_bytes())
            digest.update(raws[-1])
        return cls(raws, files, label, digest.hexdigest(), opts)

    def chunks(self) -> Iterator[str]:
        """Cleaned text in order; files are joined by a blank line."""
        for i, (path, raw) in enumerate(zip(self.files, self.raws, strict=True)):
            for a, b in _chunk_bounds(raw):
                try:
                    text = raw[a:b].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(
                        f"{path} is not UTF-8 text ({e.reason} at byte {a + e.start})"
                    ) from None
                yield clean(("\n\n" if i and a == 0 else "") + text, self.opts)

    def offset_chunks(self) -> Iterator[tuple[int, str]]:
        """(character offset in the cleaned corpus, chunk) pairs."""
        offset = 0
        for chunk in self.chunks():
            yield offset, chunk
            offset += len(chunk)


# ----------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class Pieces:
    """The corpus cut into paragraphs (long ones into chunks), as parallel arrays.

    Piece i is text[start[i]:end[i]], its trailing blank-line separator included; its own
    content ends at content_end[i]. `opens`/`closes` say whether a paragraph begins or ends
    with it. Arrays rather than objects keep a 100 MB corpus's pieces a few MB.
    """

    start: np.ndarray
    content_end: np.ndarray
    end: np.ndarray
    opens: np.ndarray
    closes: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def take(self, mask: np.ndarray) -> Pieces:
        return Pieces(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def lengths(self) -> np.ndarray:
        return self.end - self.start

    def within(self, start: int, stop: int) -> slice:
        """Index range of the pieces that start in [start, stop)."""
        lo, hi = np.searchsorted(self.start, [start, stop])
        return slice(int(lo), int(hi))


_NON_SPACE = re.compile(r"\S")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def _cut_long(text: str, start: int, content_end: int, end: int) -> Pieces:
    """One paragraph longer than MAX_CHUNK_CHARS, cut at whitespace into chunks."""
    rows, pos = [], start
    while content_end - pos > MAX_CHUNK_CHARS:
        window = pos + MAX_CHUNK_CHARS
        cut = max(text.rfind(" ", pos + 1, window), text.rfind("\n", pos + 1, window))
        cut = cut + 1 if cut > pos else window
        rows.append((pos, cut, cut, pos == start, False))
        pos = cut
    rows.append((pos, content_end, end, pos == start, True))
    cols = [np.array(col) for col in zip(*rows, strict=True)]
    return Pieces(*(c.astype(np.int64) for c in cols[:3]), cols[3], cols[4])


def pieces(text: str, offset: int = 0) -> Pieces:
    """Cover `text` with paragraphs, cutting those over MAX_CHUNK_CHARS at whitespace.

    Positions are shifted by `offset`, the text's place in the whole corpus."""
    spans = (m.span() for m in _PARAGRAPH_BREAK.finditer(text))
    seps = np.fromiter(itertools.chain.from_iterable(spans), dtype=np.int64).reshape(-1, 2)
    n = len(text)
    start = np.concatenate([[0], seps[:, 1]])
    content_end = np.concatenate([seps[:, 0], [n]])
    end = np.concatenate([seps[:, 1], [n]])
    keep = end > start
    whole = Pieces(
        start[keep],
        content_end[keep],
        end[keep],
        np.ones(keep.sum(), bool),
        np.ones(keep.sum(), bool),
    )
    parts, prev = [], 0
    for i in np.flatnonzero(whole.content_end - whole.start > MAX_CHUNK_CHARS).tolist():
        parts.append(whole.take(slice(prev, i)))
        parts.append(
            _cut_long(text, int(whole.start[i]), int(whole.content_end[i]), int(whole.end[i]))
        )
        prev = i + 1
    parts.append(whole.take(slice(prev, None)))
    out = concat_pieces(parts)
    return Pieces(
        out.start + offset, out.content_end + offset, out.end + offset, out.opens, out.closes
    )


def concat_pieces(parts: list[Pieces]) -> Pieces:
    fields = Pieces.__dataclass_fields__
    return Pieces(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def split_mask(ps: Pieces, opts: CorpusOptions) -> np.ndarray:
    """Boolean mask of validation pieces: the last ones, or seeded random ones, until they
    hold `val_fraction` of the characters. Each split keeps corpus order."""
    n = len(ps)
    order = np.arange(n)[::-1]
    if opts.random_split:
        order = np.random.default_rng(opts.split_seed).permutation(n)
    lengths = ps.lengths()
    held = np.cumsum(lengths[order])
    count = int(np.searchsorted(held, opts.val_fraction * held[-1])) + 1
    mask = np.zeros(n, dtype=bool)
    mask[order[:count]] = True
    if mask.all() or not mask.any():
        raise UserError(
            f"corpus too small for a {opts.val_fraction:.0%} validation split "
            f"({int(held[-1])} characters in {n} paragraph(s)); add text or change --val-fraction"
        )
    return mask


# ----------------------------------------------------------------------------- writing


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned integer type that holds every id."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise UserError(f"vocabulary of {vocab_size} ids is too large")


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is an existing file; choose a directory path")


def write_outputs(out_dir: Path, files: dict[str, bytes | list[np.ndarray]]) -> None:
    """All-or-nothing: bytes as they are, id arrays back to back."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def writer(payload: bytes | list[np.ndarray]) -> fileio.Writer:
        if isinstance(payload, bytes):
            return lambda f: f.write(payload)
        return lambda f: [a.tofile(f) for a in payload]

    fileio.write_files({out_dir / name: writer(payload) for name, payload in files.items()})


def corpus_meta(corpus: Corpus, chars: int) -> dict:
    opts = asdict(corpus.opts)
    return {
        "corpus": corpus.label,
        "sources": [str(p) for p in corpus.files],
        "corpus_chars": chars,
        "corpus_sha256": corpus.sha256,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.items()},
    }


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def chunk_codes(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct code points of `text`, each character's index into them).

    Vectorised: code points come from one `encode` (bytes for ASCII text, else UTF-32), and a
    presence table replaces any per-character Python work.
    """
    ascii_only = text.isascii()
    cps = np.frombuffer(
        text.encode("ascii" if ascii_only else "utf-32-le"),
        dtype=np.uint8 if ascii_only else np.uint32,
    )
    present = np.zeros(128 if ascii_only else 0x110000, dtype=bool)
    present[cps] = True
    vocab = np.flatnonzero(present)
    index = np.zeros(len(present), dtype=id_dtype(len(vocab)))
    index[vocab] = np.arange(len(vocab))
    return vocab, index[cps]


@dataclass
class Scan:
    """What one pass over the corpus learns: its paragraphs and length."""

    pieces: Pieces
    chars: int


def scan(corpus: Corpus, out_dir: Path, on_chunk: Callable[[int, str], None] | None = None) -> Scan:
    """Validate the options and the corpus (nothing is written yet) and cut it into pieces;
    `on_chunk(offset, chunk)` sees every chunk of the same pass."""
    if not 0.0 < corpus.opts.val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (got {corpus.opts.val_fraction})")
    check_out_dir(out_dir)
    parts, chars, blank = [], 0, True
    for offset, chunk in corpus.offset_chunks():
        parts.append(pieces(chunk, offset))
        chars = offset + len(chunk)
        blank = blank and not _NON_SPACE.search(chunk)
        if on_chunk is not None:
            on_chunk(offset, chunk)
    if blank:
        raise UserError(
            f"the corpus ({corpus.label}) is empty or whitespace only; give it some text"
        )
    return Scan(concat_pieces(parts), chars)


def split_views(
    offsets: list[int], arrays: list[np.ndarray], ps: Pieces, is_val: np.ndarray
) -> dict[str, list[np.ndarray]]:
    """Per split, views of the chunk arrays covering its pieces in corpus order (runs of
    consecutive pieces of one split become one view per chunk they touch)."""
    out: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    bounds = np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1
    for first, stop in zip([0, *bounds.tolist()], [*bounds.tolist(), len(ps)], strict=True):
        lo, hi = int(ps.start[first]), int(ps.end[stop - 1])
        views = out["val" if is_val[first] else "train"]
        k = int(np.searchsorted(offsets, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, offsets[k] + len(arrays[k]))
            views.append(arrays[k][lo - offsets[k] : end - offsets[k]])
            lo, k = end, k + 1
    return out


def prepare_char(opts: PrepareCharConfig) -> dict:
    """Characters -> ids in a single pass; the vocabulary is every character of the
    (cleaned) corpus. Each chunk is first encoded against its own characters, then
    remapped to the global vocabulary once it is known."""
    corpus = Corpus.load(opts)
    offsets: list[int] = []
    local: list[tuple[np.ndarray, np.ndarray]] = []

    def encode_chunk(offset: int, chunk: str) -> None:
        offsets.append(offset)
        local.append(chunk_codes(chunk))

    sc = scan(corpus, opts.out_dir, encode_chunk)
    corpus.raws.clear()  # a single pass: the bytes are no longer needed
    is_val = split_mask(sc.pieces, opts)
    _say(f"corpus: {corpus.label}, {sc.chars:,} characters")
    vocab = np.unique(np.concatenate([v for v, _ in local]))
    dtype = id_dtype(len(vocab))
    arrays = []
    while local:
        chunk_vocab, chunk_ids = local.pop(0)
        arrays.append(np.searchsorted(vocab, chunk_vocab).astype(dtype)[chunk_ids])
    tok = CharTokenizer([chr(c) for c in vocab])
    splits = split_views(offsets, arrays, sc.pieces, is_val)
    counts = {name: sum(a.size for a in views) for name, views in splits.items()}
    meta = {
        "mode": "char", "vocab_size": tok.vocab_size, "dtype": dtype.name,
        "train_tokens": counts["train"], "val_tokens": counts["val"],
        "tokenizer_file": "vocab.json",
    } | corpus_meta(corpus, sc.chars)  # fmt: skip
    write_outputs(
        opts.out_dir,
        {
            "train.bin": splits["train"],
            "val.bin": splits["val"],
            "vocab.json": fileio.json_bytes(tok.chars),
            "meta.json": fileio.json_bytes(meta),
        },
    )
    return meta


def _training_sample(corpus: Corpus, ps: Pieces, seed: int) -> Iterator[str]:
    """Texts of at most BPE_SAMPLE_CHARS of the pieces `ps` (drawn at random when they hold
    more), in corpus order."""
    lengths = ps.lengths()
    order = np.arange(len(ps))
    if lengths.sum() > BPE_SAMPLE_CHARS:
        order = np.random.default_rng(seed).permutation(len(ps))
    count = int(np.searchsorted(np.cumsum(lengths[order]), BPE_SAMPLE_CHARS)) + 1
    chosen = np.zeros(len(ps), dtype=bool)
    chosen[order[:count]] = True
    for offset, chunk in corpus.offset_chunks():
        idx = ps.within(offset, offset + len(chunk))
        starts, ends = ps.start[idx][chosen[idx]], ps.end[idx][chosen[idx]]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            yield chunk[a - offset : b - offset]


def encode_pieces(
    chunk: str, offset: int, ps: Pieces, tok: HFTokenizer, dtype: np.dtype, bos_eos: bool
) -> np.ndarray:
    """Batch-encode pieces of one chunk; with bos_eos each paragraph is framed by <bos> and
    <eos> and its blank-line separator dropped."""
    ends = ps.content_end if bos_eos else ps.end
    bounds = zip(ps.start.tolist(), ends.tolist(), strict=True)
    texts = [chunk[a - offset : e - offset] for a, e in bounds]
    encoded = tok.encode_batch(texts)
    if bos_eos:
        bos, eos = [tok.bos_id], [tok.eos_id]
        encoded = (
            (bos if o else []) + ids + (eos if c else [])
            for o, c, ids in zip(ps.opens.tolist(), ps.closes.tolist(), encoded, strict=True)
        )
    return np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype)


def prepare_tokenizer(opts: PrepareTokenizerConfig) -> dict:
    """Train a BPE (or word-level) tokenizer on the train split and encode both splits."""
    check_vocab_size(opts.vocab_size, opts.backend)
    corpus = Corpus.load(opts)
    sc = scan(corpus, opts.out_dir)
    is_val = split_mask(sc.pieces, opts)
    _say(f"corpus: {corpus.label}, {sc.chars:,} characters")
    _say(f"training a {opts.backend} tokenizer (vocab {opts.vocab_size})")
    trainer = train_bpe if opts.backend == "bpe" else train_word
    sample = _training_sample(corpus, sc.pieces.take(~is_val), opts.split_seed)
    tok = trainer(sample, opts.vocab_size)
    dtype = id_dtype(tok.vocab_size)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    progress = tqdm(total=sc.chars, unit="char", unit_scale=True, desc="encoding",
                    disable=sc.chars < 20_000_000, file=sys.stderr)  # fmt: skip
    for offset, chunk in corpus.offset_chunks():
        idx = sc.pieces.within(offset, offset + len(chunk))
        here, here_val = sc.pieces.take(idx), is_val[idx]
        for name, mask in (("train", ~here_val), ("val", here_val)):
            sel = here.take(mask)
            for b in range(0, len(sel), ENCODE_BATCH):
                batch = sel.take(slice(b, b + ENCODE_BATCH))
                parts[name].append(
                    encode_pieces(chunk, offset, batch, tok, dtype, opts.add_bos_eos)
                )
        progress.update(len(chunk))
    progress.close()
    counts = {name: sum(a.size for a in arrays) for name, arrays in parts.items()}
    meta = {
        "mode": "token", "backend": opts.backend, "vocab_size": tok.vocab_size,
        "dtype": dtype.name, "train_tokens": counts["train"], "val_tokens": counts["val"],
        "tokenizer_file": "tokenizer.json",
        "specials": {s: tok.tok.token_to_id(s) for s in SPECIALS},
        "add_bos_eos": opts.add_bos_eos,
    } | corpus_meta(corpus, sc.chars)  # fmt: skip
    write_outputs(
        opts.out_dir,
        {
            "train.bin": parts["train"],
            "val.bin": parts["val"],
            "tokenizer.json": tok.tok.to_str().encode("utf-8"),
            "meta.json": fileio.json_bytes(meta),
        },
    )
    return meta


# ----------------------------------------------------------------------------- batches


class Dataset:
    """A prepared data directory: memory-mapped splits plus its meta.json."""

    def __init__(self, data_dir: str | Path) -> None:
        self.dir = Path(data_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise UserError(
                f"no prepared data in {self.dir} (meta.json missing); "
                "run `python cli.py prepare-char` or `prepare-tokenizer` first"
            )
        self.meta = orjson.loads(meta_path.read_bytes())
        dtype = np.dtype(self.meta["dtype"])
        self.splits: dict[str, np.memmap] = {}
        for split in ("train", "val"):
            path = self.dir / f"{split}.bin"
            if not path.is_file() or path.stat().st_size == 0:
                raise UserError(f"{path} is missing or empty; re-run the prepare command")
            self.splits[split] = np.memmap(path, dtype=dtype, mode="r")

    def check_block_size(self, block_size: int) -> None:
        for split, data in self.splits.items():
            if len(data) <= block_size:
                raise UserError(
                    f"--block-size {block_size} is larger than the {split} split "
                    f"({len(data)} tokens); use a smaller --block-size or more text"
                )

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 [B, T] windows at random offsets, y shifted by one.

        Offsets come from `generator` alone (a CPU generator), so a run resumed with the
        saved generator state sees exactly the batches an uninterrupted run would. Only the
        B windows are read from the memmap.
        """
        data = self.splits[split]
        if len(data) <= block_size:
            self.check_block_size(block_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        rows = starts.numpy()[:, None] + np.arange(block_size + 1)
        window = torch.from_numpy(data[rows].astype(np.int64))
        device = torch.device(device)
        if device.type == "cuda":
            window = window.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            window = window.to(device)
        return window[:, :-1], window[:, 1:]
