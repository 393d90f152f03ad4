"""Character-level preparation: the vocabulary is every character of the cleaned corpus."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fileio
from ..formats.tokenizer import CharTokenizer
from .output import corpus_meta, id_dtype, say, write_outputs
from .split import scan, split_mask, split_views
from .text import Corpus, CorpusOptions


@dataclass(frozen=True)
class PrepareCharConfig(CorpusOptions):
    """Prepare a character-level dataset."""

    out_dir: Path = Path("data/char")
    """Output directory for train.bin, val.bin, vocab.json, meta.json."""


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
    say(f"corpus: {corpus.label}, {sc.chars:,} characters")
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
