"""Where the text comes from and how it is cleaned: the input files (or the embedded default
corpus), the cleaning options, and a `Corpus` that yields the cleaned text chunk by chunk so
a large corpus never has to sit in memory as one Python string.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from .. import fileio
from ..errors import UserError
from ..options import Options, unset_means

DEFAULT_CORPUS = Path("data/default.txt")
CHUNK_BYTES = 1 << 23  # the corpus is decoded, cleaned and encoded this much at a time
TEXT_DIR_USE = "(read only with --all-txt-in-dir)"  # its help's hint instead of a default


@dataclass(frozen=True)
class CorpusOptions(Options):
    """Where the text comes from and how it is cleaned and split."""

    text_path: Annotated[Path | None, unset_means("the embedded corpus")] = None
    """A .txt file (ignored with --all-txt-in-dir)."""
    all_txt_in_dir: bool = False
    """Use every .txt file of --text-dir (not recursive, sorted by name)."""
    text_dir: Annotated[Path | None, tyro.conf.arg(help_behavior_hint=TEXT_DIR_USE)] = None
    """Directory of .txt files."""
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

    def check(self) -> None:
        super().check()
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")


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
        if opts.text_path.is_dir():
            raise UserError(
                f"--text-path {opts.text_path} is a directory; pass a file, or "
                f"--text-dir {opts.text_path} --all-txt-in-dir"
            )
        if not opts.text_path.is_file():
            raise UserError(f"text file not found: {opts.text_path}")
        return [opts.text_path], str(opts.text_path)
    path = ensure_default_corpus()
    return [path], f"the embedded default corpus (Python documentation topics, {path})"


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
