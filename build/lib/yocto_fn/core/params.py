"""Helpers for parameter pytrees: nested dicts (and lists) whose leaves are tensors.

Parameters are data, not module state: they are created by pure `init` functions, passed
to pure `forward` functions, and mapped over with the small walk below. Dotted names
(`blocks.0.attn.qkv_w`) are the checkpoint format, the basis of partial loading and what
`optim.partition` labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Params = dict[str, Any]


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply `fn` leaf-wise over trees of dicts, lists and tuples (NamedTuples kept).

    A small recursive walk rather than `torch.utils._pytree`: the optimizer maps over the
    tree every step, and this is several times cheaper for the shapes used here.
    """
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree)]
    if isinstance(tree, tuple):
        mapped = [tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree)]
        return type(tree)._make(mapped) if hasattr(tree, "_fields") else tuple(mapped)
    return fn(tree, *rest)


def under_transform() -> bool:
    """True inside a torch.func transform (`vmap`, `grad`, `jvp`).

    The one probe of functorch's state that the core consults: `torch._foreach_*` kernels
    have no batching rules, so the optimizer links run leaf by leaf there, and a KV cache
    is written out of place there (see `cache`)."""
    return torch._C._functorch.maybe_current_level() is not None


def tree_leaves(tree: Any) -> list[Any]:
    """Leaves in the order `tree_map` visits them."""
    out: list[Any] = []
    tree_map(out.append, tree)
    return out


def tree_unflatten_like(tree: Any, leaves: list[Any]) -> Any:
    """A tree shaped like `tree` holding `leaves` (in `tree_leaves` order)."""
    it = iter(leaves)
    return tree_map(lambda _: next(it), tree)


def as_generator(seed_or_generator: int | torch.Generator) -> torch.Generator:
    """A CPU generator, so that the same seed gives the same params on every device."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    return torch.Generator().manual_seed(int(seed_or_generator))


def normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    """N(0, std^2) draws from `gen`. Under `torch.device("meta")` (a tree of shapes only, as
    `checkpoint.tree_from_flat` builds) nothing is drawn: sampling on meta imports the compiler,
    over a second."""
    if torch.get_default_device().type == "meta":
        return torch.empty(shape)
    return torch.randn(shape, generator=gen) * std


def count(params: Params) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in tree_leaves(params))


def to(params: Params, device: torch.device | str | None = None, dtype=None) -> Params:
    """Move/cast every floating leaf (returns a new tree)."""
    return tree_map(
        lambda p: p.to(device=device, dtype=dtype if p.is_floating_point() else None), params
    )


def named_leaves(params: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a tree to `{dotted.name: leaf}` in `tree_leaves` order (a NamedTuple's
    entries are named by their fields: `1.inner.0.mu.wte` in an optimizer state)."""
    if isinstance(params, dict):
        items = params.items()
    elif hasattr(params, "_fields"):
        items = zip(params._fields, params, strict=True)
    elif isinstance(params, (list, tuple)):
        items = enumerate(params)
    else:
        return {prefix: params}
    out: dict[str, Any] = {}
    for key, sub in items:
        out.update(named_leaves(sub, f"{prefix}.{key}" if prefix else str(key)))
    return out


def stack(trees: list[Any]) -> Any:
    """Stack same-structured trees (params, optimizer states) along a new leading axis E:
    an ensemble, as `vmap` and `ensemble.make_ensemble_step` take it."""
    if not trees:
        raise ValueError("stack needs at least one tree")
    return tree_map(lambda *xs: torch.stack(xs), trees[0], *trees[1:])


def unstack(tree: Any, n: int | None = None) -> list[Any]:
    """Inverse of `stack`: E trees, E read off the leading axis when `n` is not given."""
    n = tree_leaves(tree)[0].shape[0] if n is None else n
    return [tree_map(lambda p, i=i: p[i], tree) for i in range(n)]


def max_abs_diff(a: Params, b: Params) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True)
    )


def clone(params: Params) -> Params:
    return tree_map(torch.clone, params)
