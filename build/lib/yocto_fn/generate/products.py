"""How decoding reads its weights: the bundle of primitives (`layers.Ops`) a decode step
hands the forward.

Eager, plain weights take `layers.PLAIN` and int8 rows `quantize.OPS`. A compiled step
takes `COMPILED`, whose product writes a single row (decoding at batch 1) as a product and
a sum: the compiler fuses that into one pass over the weights at their stored width, on
CPU about 4x the library's matrix-vector product in fp32, and the only form in which int8
or bf16 weights are read as such rather than widened to a temporary first. More rows take
the library's product.
"""

from __future__ import annotations

import torch

from ..core import layers
from ..core.params import Params
from . import quantize

Tensor = torch.Tensor


def row_project(x: Tensor, w: Tensor, b: Tensor | None = None, scale: Tensor | None = None):
    """x @ w.T (* scale) (+ b), one row as a fused product and sum (see the module)."""
    if x.shape[:-1].numel() != 1:
        return quantize.project(x, w, b, scale)
    y = (x.unsqueeze(-2) * w.to(x.dtype)).sum(-1)
    if scale is not None:
        y = y * scale.to(y.dtype)
    return y if b is None else y + b


COMPILED = layers.PLAIN._replace(project=row_project)


def decode_ops(params: Params, compiled: bool) -> layers.Ops:
    """The primitives a decode step over `params` runs with."""
    if compiled:
        return COMPILED
    return quantize.OPS if quantize.is_int8(params) else layers.PLAIN
