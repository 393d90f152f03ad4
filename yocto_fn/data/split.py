"""Cutting the cleaned corpus into paragraphs and choosing which go to validation.

Both preparations share this: one validating pass over the corpus (`scan`) gives its
paragraphs as `Pieces`, `split_mask` picks the validation ones, and `split_views` hands each
split its encoded text in corpus order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .output import check_out_dir
from .text import Corpus, CorpusOptions

MAX_CHUNK_CHARS = 2000  # longest piece a random split moves as one unit


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


@dataclass
class Scan:
    """What one pass over the corpus learns: its paragraphs and length."""

    pieces: Pieces
    chars: int


def scan(corpus: Corpus, out_dir: Path, on_chunk: Callable[[int, str], None] | None = None) -> Scan:
    """Validate the output directory and the corpus (nothing is written yet) and cut it into pieces;
    `on_chunk(offset, chunk)` sees every chunk of the same pass."""
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
