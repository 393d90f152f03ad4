"""`ModelConfig`: the shape of a model, shared by every variant.

A plain frozen dataclass that the core owns: the forward, the cache and the train step read
it, checkpoints store it (`to_dict` / `from_dict`), and the CLI's flags are built on top of
it elsewhere. Field names follow the command-line flags (`--n_layer` -> `n_layer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a model; shared by all three variants.

    `bias` is honoured by `gpt` only: `gpt-plus` and `gpt-fast` are biasless by definition.
    `rope_theta` is used by `gpt-plus` only. `gelu` picks the GELU of `gpt` and `gpt-fast`:
    "exact" (erf, this project's) or "tanh" (the approximation GPT-2 was trained with).
    `norm_eps` and `mlp_hidden` left at None take the variant's own values (LayerNorm 1e-5,
    RMSNorm 1e-6; MLP width 4C, SwiGLU `swiglu_hidden(C)`); imported models set them to
    theirs. Checkpoints written before a field existed lack it and load with its default.
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
    gelu: Literal["exact", "tanh"] = "exact"
    norm_eps: float | None = None
    mlp_hidden: int | None = None

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
        if self.gelu not in ("exact", "tanh"):
            raise UserError(f"gelu must be 'exact' or 'tanh' (got {self.gelu!r})")
        if self.norm_eps is not None and self.norm_eps <= 0:
            raise UserError(f"norm_eps must be positive (got {self.norm_eps})")
        if self.mlp_hidden is not None and self.mlp_hidden <= 0:
            raise UserError(f"mlp_hidden must be positive (got {self.mlp_hidden})")

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
