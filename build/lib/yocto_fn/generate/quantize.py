"""Weight-only quantisation for decoding: params in, params out.

Decoding one token at batch 1 reads every weight once per token and does two FLOPs per
weight, so it is bound by memory traffic: narrower weights decode faster. `int8` stores each
linear weight (and the output head) as int8 with one fp32 scale per output row (symmetric,
max-abs), which `project` (the product of `OPS`, the primitives a forward over such a tree
runs with) applies after the product; embeddings, norms and biases stay as they were.
`bf16` casts every floating leaf, so the KV cache is bf16 too.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..core import layers
from ..core.params import Params, tree_map

Mode = Literal["none", "int8", "bf16"]


def project(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """x @ w.T in x's dtype (int8 rows widened), times each output row's `scale`, (+ b)."""
    if scale is None:
        return F.linear(x, w.to(x.dtype), b)
    y = F.linear(x, w.to(x.dtype)) * scale.to(x.dtype)
    return y if b is None else y + b


OPS = layers.PLAIN._replace(project=project)


def is_int8(params: Params) -> bool:
    """Whether `params` is an int8 tree (`quantize(..., "int8")`): its head carries a scale."""
    return "lm_head_scale" in params


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [out, in], scale fp32 [out]) with w ~= q * scale[:, None]."""
    scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _int8_tree(tree: dict) -> dict:
    out = {}
    for name, leaf in tree.items():
        if isinstance(leaf, dict):
            out[name] = _int8_tree(leaf)
        elif isinstance(leaf, list):
            out[name] = [_int8_tree(t) for t in leaf]
        elif name.endswith("_w") and leaf.dim() == 2:
            out[name], out[f"{name[:-2]}_scale"] = int8_rows(leaf)
        else:
            out[name] = leaf
    return out


def quantize(params: Params, mode: Mode) -> Params:
    """A new tree for decoding in `mode` (the input is left untouched)."""
    if mode == "none":
        return params
    if mode == "bf16":
        return tree_map(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, params)
    if mode != "int8":
        raise ValueError(f"unknown quantisation {mode!r}")
    out = _int8_tree(params)
    out["lm_head"], out["lm_head_scale"] = int8_rows(params.get("lm_head", params["wte"]))
    return out
