"""Writing a prepared dataset: the id dtype, the output directory check, the all-or-nothing
write of every output file, and the corpus part of `meta.json`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import fileio
from ..errors import UserError
from .text import Corpus


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


def say(msg: str) -> None:
    print(msg, file=sys.stderr)
