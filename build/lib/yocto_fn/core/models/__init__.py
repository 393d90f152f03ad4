"""Model registry: `get("gpt" | "gpt-plus" | "gpt-fast")` (underscore spellings accepted)."""

from ...errors import UserError
from . import gpt, gpt_fast, gpt_plus
from .transformer import Model, Recipe

NAMES = ("gpt", "gpt-plus", "gpt-fast")
_REGISTRY = {m.name: m for m in (gpt.MODEL, gpt_plus.MODEL, gpt_fast.MODEL)}


def canonical_name(name: str) -> str:
    """`gpt_plus` -> `gpt-plus`; raises UserError for an unknown variant."""
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(NAMES)}")
    return key


def get(name: str) -> Model:
    return _REGISTRY[canonical_name(name)]


__all__ = ["NAMES", "Model", "Recipe", "canonical_name", "get", "gpt", "gpt_fast", "gpt_plus"]
