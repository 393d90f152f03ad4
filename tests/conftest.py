"""Shared helpers: the variant names, a tiny model shape that keeps the suite fast, and a
prepared char-level data directory."""

from pathlib import Path

import pytest
import torch

import cli
from yocto_fn.config import ModelConfig

VARIANTS = ("gpt", "gpt-plus", "gpt-fast")


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return ModelConfig(**(base | overrides))


def real_text() -> str:
    """Real prose: the shared philosophy corpus when present, else the embedded default."""
    from pathlib import Path

    from yocto_fn.data import default_corpus_text

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "philosophy.txt"
    return shared.read_text(encoding="utf-8") if shared.is_file() else default_corpus_text()


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory) -> Path:
    """A char-level data directory prepared from 40k characters of real text."""
    root = tmp_path_factory.mktemp("data")
    corpus = root / "corpus.txt"
    corpus.write_text(real_text()[:40_000], encoding="utf-8")
    assert cli.main(["prepare-char", "--text-path", str(corpus), "--out-dir", str(root / "c")]) == 0
    return root / "c"


def ckpt(path: Path) -> dict:
    """A checkpoint file as plain data."""
    return torch.load(path, weights_only=True)
