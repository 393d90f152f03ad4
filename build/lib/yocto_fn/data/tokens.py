"""Token-level preparation: train a BPE (or word-level) tokenizer on the train split, then
encode both splits paragraph by paragraph in batches."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from .. import fileio
from ..formats.tokenizer import SPECIALS, HFTokenizer, check_vocab_size, train_bpe, train_word
from .output import corpus_meta, id_dtype, say, write_outputs
from .split import Pieces, scan, split_mask
from .text import Corpus, CorpusOptions

BPE_SAMPLE_CHARS = 20_000_000  # BPE merges are learned on at most this much text
ENCODE_BATCH = 2048  # paragraphs per call into the multi-threaded encoder


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

    def check(self) -> None:
        super().check()
        check_vocab_size(self.vocab_size, self.backend)


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
    corpus = Corpus.load(opts)
    sc = scan(corpus, opts.out_dir)
    is_val = split_mask(sc.pieces, opts)
    say(f"corpus: {corpus.label}, {sc.chars:,} characters")
    say(f"training a {opts.backend} tokenizer (vocab {opts.vocab_size})")
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
