"""Shared helpers: the variant names and a tiny model shape that keeps the suite fast."""

from yocto_fn.config import ModelConfig

VARIANTS = ("gpt", "gpt-plus", "gpt-fast")


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return ModelConfig(**(base | overrides))
