"""Shared helpers: the variant names and a tiny model shape that keeps the suite fast."""

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
