"""Configuration dataclasses.

Field names follow the command-line flags (`--n_layer` / `--n-layer` -> `n_layer`), so a
flag, a config field and a checkpoint entry always carry the same name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a model; shared by all three variants.

    `bias` is honoured by `gpt` only: `gpt-plus` and `gpt-fast` are biasless by definition.
    `rope_theta` is used by `gpt-plus` only.
    """

    vocab_size: int = 96
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    tie_weights: bool = False
    bias: bool = True
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        positive = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive (got {getattr(self, name)})")
        if self.n_embd % self.n_head:
            raise UserError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "choose e.g. --n-embd 128 --n-head 4"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1) (got {self.dropout})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Rebuild from a checkpoint entry, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
