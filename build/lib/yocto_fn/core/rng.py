"""Stateless, counter-based random numbers in the style of JAX keys.

A key is a 0-d int64 tensor holding a 32-bit value. Random bits are a pure function of
(key, element index), so dropout never touches the global RNG, is identical eager and
compiled, works under `vmap` (a batched key gives each ensemble member its own mask), and a
resumed run reproduces an uninterrupted one from the step number alone.

The mixer is a well-known 32-bit integer hash (two multiply-xorshift rounds). Its multiplier
is below 2**27, so every product of 32-bit values fits in int64 without overflow.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_MUL = 0x45D9F3B
_STRIDE = 0x2545F491  # odd, < 2**31: spreads consecutive counters before mixing


def _mix32(x):
    """Avalanche a value in [0, 2**32); works on Python ints and int64 tensors alike."""
    x = (((x >> 16) ^ x) * _MUL) & _MASK32
    x = (((x >> 16) ^ x) * _MUL) & _MASK32
    return (x >> 16) ^ x


def key(seed: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A key from an integer seed."""
    return torch.tensor(_mix32(int(seed) & _MASK32), dtype=torch.int64, device=device)


def fold_in(k: torch.Tensor, data: int) -> torch.Tensor:
    """A new key that depends on `k` and `data` (e.g. the training step)."""
    return _mix32(k ^ _mix32((int(data) + 1) & _MASK32))


def split(k: torch.Tensor, num: int) -> torch.Tensor:
    """`num` independent keys derived from `k`, as a 1-d tensor."""
    counters = torch.arange(1, num + 1, dtype=torch.int64, device=k.device)
    return _mix32(k.unsqueeze(-1) ^ _mix32(counters))


def _bits(k: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Bits for every key in `k` (any batch shape): result shape `k.shape + shape`."""
    n = math.prod(shape)
    counters = torch.arange(n, dtype=torch.int64, device=k.device).view(shape)
    k = k.reshape(k.shape + (1,) * len(shape))
    return _mix32((counters * _STRIDE + k) & _MASK32)


@torch.library.custom_op("yocto_fn::random_bits", mutates_args=())
def _bits_op(k: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return _bits(k, shape)


@_bits_op.register_fake
def _(k: torch.Tensor, shape: list[int]) -> torch.Tensor:
    return k.new_empty(tuple(k.shape) + tuple(shape))


@_bits_op.register_vmap
def _(info, in_dims, k: torch.Tensor, shape: list[int]):
    k = k if in_dims[0] is None else k.movedim(in_dims[0], 0)
    return _bits(k, shape), (None if in_dims[0] is None else 0)


def bits(k: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Uniform 32-bit integers (as int64) of `shape`, a pure function of `k`.

    An opaque custom op to the compiler: fused into one kernel, the hash's repeated
    sub-expressions make inductor's code generation blow up (minutes for a tiny model).
    """
    return _bits_op(k, list(shape))


def uniform(k: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Uniform floats in [0, 1)."""
    return bits(k, shape).to(torch.float32) * (1.0 / 2**32)
