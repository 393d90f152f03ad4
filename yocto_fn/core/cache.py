"""The KV cache as an explicit value.

`KVCache(k, v, pos)` holds static, preallocated per-layer buffers [L, B, H, Tmax, Dh] and
the number of filled positions as an int64 tensor: 0-d when every row is at the same
position, or [B], a position per row, when rows hold unrelated sequences (a server's batch,
where requests join and leave between steps). A per-row cache's buffers may hold more rows
than the batch that runs over them: a call with B tokens' rows (`pos` of shape [B]) uses the
first B rows, so one set of buffers serves steps of every batch size up to its own. A
forward call with a cache writes the new keys/values at `pos` and returns the cache with
`pos` advanced. Keeping `pos` a tensor (not a Python int) keeps shapes and guards static, so
a compiled single-token step compiles once for every position.

The contract: a cache is consumed by the call that takes it; go on with the returned one.
Where the write goes is one rule, `writes_in_place`:
- In plain eager or compiled code the write is in place, into the buffers of the cache
  passed in (as gpt-fast does; a copy per token would cost more than the step). The
  returned cache shares those buffers, and the old value's `pos` no longer describes them.
  To branch (two continuations of one prompt), `clone` the cache first.
- Under torch.func transforms (`vmap` over prompts, `grad`), which forbid writing batched
  values into a tensor they do not batch, the write is out of place: the returned cache
  holds new buffers and the one passed in is left as it was.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import UserError
from .config import ModelConfig
from .params import under_transform


class KVCache(NamedTuple):
    """Per-layer key/value buffers [L, B, H, Tmax, Dh] and the filled positions (0-d or [B]).

    A forward call consumes the cache it is given and returns the one to go on with; where
    it writes is the one rule of `writes_in_place`."""

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


def writes_in_place() -> bool:
    """The cache's one write rule. In eager and compiled code a forward writes the new keys
    and values into the buffers of the cache it is given (a copy per token would cost more
    than the step), and the returned cache shares them. Under a torch.func transform
    (`vmap` over prompts, `grad`), whose batched values cannot be written into buffers it
    does not batch, the forward makes new buffers and leaves the given cache as it was."""
    return not under_transform()


def init_cache(
    cfg: ModelConfig,
    batch: int,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    per_row: bool = False,
) -> KVCache:
    """Zeroed buffers for `max_len` positions (default: the model's `block_size`);
    `per_row` gives each row its own position ([B] instead of one shared 0-d `pos`)."""
    max_len = cfg.block_size if max_len is None else max_len
    shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
    return KVCache(
        k=torch.zeros(shape, dtype=dtype, device=device),
        v=torch.zeros(shape, dtype=dtype, device=device),
        pos=torch.zeros((batch,) if per_row else (), dtype=torch.int64, device=device),
    )


def row(cache: KVCache, i: int) -> KVCache:
    """Row `i` of a per-row cache as a one-row cache that shares its buffers (a view): a
    forward over it (a prompt's prefill) writes into the batch's buffers in place. Its `pos`
    is that row's, 0-d; the caller stores the advanced position back into the batch."""
    return KVCache(cache.k[:, i : i + 1], cache.v[:, i : i + 1], cache.pos[i].clone())


def check_room(cache: KVCache, new_tokens: int) -> None:
    """Refuse a write past the buffers' end with a clear message.

    Reading `pos` costs a host sync on an accelerator, so the check runs in eager mode only; a
    compiled decode loop tracks the position on the host and stays inside the buffers. Under
    a transform (`vmap` with a position per prompt) there is no one number to check; a
    write past the end then fails in `index_copy`.
    """
    if torch.compiler.is_compiling() or under_transform():
        return
    pos = int(cache.pos.max())
    if pos + new_tokens > cache.max_len:
        raise UserError(
            f"KV cache is full: {pos} cached + {new_tokens} new tokens > max_len "
            f"{cache.max_len}; slide the context window (re-prefill the last tokens) first"
        )


def positions_and_mask(
    cache: KVCache | None, new_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Absolute positions of the new tokens and, with a cache, the attention mask.

    Positions are [T], or [B, T] for a per-row cache; the mask is [T, Tmax], or [B, 1, T,
    Tmax] (broadcast over heads). Without a cache the mask is None, meaning plain causal
    attention over the T tokens.
    """
    offsets = torch.arange(new_tokens, device=device)
    if cache is None:
        return offsets, None
    positions = cache.pos[..., None] + offsets
    keys = torch.arange(cache.max_len, device=device)
    mask = keys <= positions[..., None]
    return positions, (mask[:, None] if positions.dim() == 2 else mask)


class Writes:
    """The cache writes of one forward call, layer by layer (see the module's contract)."""

    def __init__(self, cache: KVCache, positions: torch.Tensor) -> None:
        self.cache, self.positions = cache, positions
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if not writes_in_place():
            self.copies = []

    def __call__(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s new keys/values [B, H, T, D] at the positions; return the
        layer's whole buffers [B, H, Tmax, D] (layers are written in order)."""
        if self.copies is not None:
            k_all, v_all = (
                buf[layer].index_copy(2, self.positions, new.to(buf.dtype))
                for buf, new in ((self.cache.k, k), (self.cache.v, v))
            )
            self.copies.append((k_all, v_all))
            return k_all, v_all
        return write(self.cache, layer, self.positions, k, v)

    def result(self) -> KVCache:
        """The cache to return: positions advanced past the new tokens."""
        cache = advance(self.cache, self.positions.shape[-1])
        if self.copies is None:
            return cache
        ks, vs = zip(*self.copies, strict=True)
        return KVCache(torch.stack(ks), torch.stack(vs), cache.pos)


def write(
    cache: KVCache, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Store layer `layer`'s new keys/values [B, H, T, D] at `positions` ([T], or [B, T] per
    row), in place; return the layer's whole buffers [B, H, Tmax, D] (for B rows).

    The write is one `index_put_` on the full [L, B, H, Tmax, D] buffer rather than on a view
    of it: written that way the compiler updates the cache in place, where a write into a
    view made it copy every layer's buffer twice per token.
    """
    layers = torch.full_like(positions, layer)
    if positions.dim() == 1:  # None: a full slice; the indexed axes lead the values' shape
        where, order, n = [layers, None, None, positions], (2, 0, 1, 3), cache.k.shape[1]
    else:  # a position per row: the first B rows of the buffers (see the module's docstring)
        n = positions.shape[0]
        rows = torch.arange(n, device=positions.device)[:, None]
        where, order = [layers, rows, None, positions], (0, 2, 1, 3)
    for buf, new in ((cache.k, k), (cache.v, v)):
        torch.ops.aten.index_put_(buf, where, new.to(buf.dtype).permute(*order))
    return cache.k[layer, :n], cache.v[layer, :n]


def advance(cache: KVCache, new_tokens: int) -> KVCache:
    """The cache with `pos` moved past `new_tokens` tokens.

    Built with the constructor, not `_replace`, here and in `Writes.result` (the code that
    compiled steps trace): Dynamo can return a NamedTuple made by `_replace` as an empty
    tuple, which breaks the next compiled call.
    """
    return KVCache(cache.k, cache.v, cache.pos + new_tokens)


def clone(cache: KVCache) -> KVCache:
    """An independent copy, to continue one cache in two ways."""
    return KVCache(cache.k.clone(), cache.v.clone(), cache.pos.clone())
