"""Pure building blocks of the GPT variants: the plain math, one model's weights.

Every function takes tensors (and small dicts of tensors) and returns new tensors: no module
state, no global RNG. A parameter dict names its weights `<name>_w` and its optional biases
`<name>_b`, so a biasless variant is simply one whose dict has no `_b` entries.

The four primitives that depend on how the weights are held (the table lookup, the product
with a weight, the two norms) come as an `Ops` bundle. `PLAIN` is this module's; the others
each live in one named place: a stacked ensemble's in `members`, int8 rows in
`generate.quantize`, the compiled single-row decode product in `generate.products`. The
forward takes a bundle (`ops=`) and hands it to the blocks here that need one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from . import rng

Tensor = torch.Tensor
LAYER_NORM_EPS = 1e-5
RMS_NORM_EPS = 1e-6
Attend = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
Project = Callable[..., Tensor]  # (x, w, b=None, scale=None) -> x @ w.T (+ b)


class Ops(NamedTuple):
    """The primitives that depend on how the weights are held (see the module docstring)."""

    embedding: Callable[[Tensor, Tensor], Tensor]  # (weight, idx) -> rows
    project: Project
    layer_norm: Callable[..., Tensor]  # (x, {"w", "b"?}, eps)
    rms_norm: Callable[..., Tensor]  # (x, {"w"}, eps)


def embedding(weight: Tensor, idx: Tensor) -> Tensor:
    """Rows of `weight` [V, C] for `idx`."""
    return F.embedding(idx, weight)


def project(x: Tensor, w: Tensor, b: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x @ w.T (+ b). Weights with a per-row `scale` (int8 rows) are `generate.quantize`'s to
    read: here they are refused rather than read as if they were plain."""
    if scale is not None:
        raise ValueError("int8 weights with a scale: run the forward with quantize.OPS")
    return F.linear(x, w, b)


def layer_norm(x: Tensor, p: dict[str, Tensor], eps: float = LAYER_NORM_EPS) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), p["w"], p.get("b"), eps)


def rms_norm(x: Tensor, p: dict[str, Tensor], eps: float = RMS_NORM_EPS) -> Tensor:
    return F.rms_norm(x, (x.shape[-1],), p["w"], eps)


PLAIN = Ops(embedding, project, layer_norm, rms_norm)


def linear(x: Tensor, p: dict[str, Tensor], name: str, ops: Ops = PLAIN) -> Tensor:
    """`{name}_w` (with `{name}_b` and `{name}_scale` where the dict has them) applied to x."""
    return ops.project(x, p[f"{name}_w"], p.get(f"{name}_b"), p.get(f"{name}_scale"))


def dropout(x: Tensor, p: float, key: Tensor | None) -> Tensor:
    """Inverted dropout whose mask is a pure function of `key`; identity when key is None.

    A key [E] drops each member's slice x[e] with its own key, exactly as x[e] alone would be.
    """
    if key is None or p == 0.0:
        return x
    keep = rng.bits(key, x.shape[key.dim() :]) >= round(p * 2**32)
    return x * keep * (1.0 / (1.0 - p))


def rope_angles(
    positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin tables [T, head_dim/2] for the given absolute positions [T]; for positions
    [B, T] (a row per sequence) [B, 1, T, head_dim/2], broadcast over the heads.

    Computed from positions rather than read from a fixed table, so a cached decode at any
    offset (or a rolled cache) needs no maximum length. The frequencies are rounded as
    transformers' Llama rounds them (1 / theta^(2i/d) in fp32): theta^(-2i/d) differs in the
    last bit, which far positions turn into logit differences near 1e-4 against an export.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / theta ** (exponents / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    if angles.dim() == 3:
        angles = angles[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (first half, second half) feature pairs of x [B, H, T, D] by position angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def causal_mask(t: int, device: torch.device) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def attend_manual(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float = 0.0, key: Tensor | None = None
) -> Tensor:
    """Explicit softmax(QK^T/sqrt(d))V; `mask` [T, S] is True where a query may look.

    This path can drop attention probabilities with an explicit key, which SDPA cannot.
    """
    if mask is None:
        mask = causal_mask(q.shape[-2], q.device)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return dropout(att, p, key) @ v


def attend_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Fused scaled-dot-product attention (Flash / memory-efficient kernels where available).

    Member and batch axes ([E, B, H, T, D]) are folded into one batch axis for the kernel.
    """
    lead = q.shape[:-3]
    q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.view(*lead, *y.shape[1:])


def causal_self_attention(
    x: Tensor,
    p: dict[str, Tensor],
    n_head: int,
    attend: Attend,
    *,
    rope: tuple[Tensor, Tensor] | None = None,
    kv: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    positions: Tensor | None = None,
    mask: Tensor | None = None,
    ops: Ops = PLAIN,
) -> Tensor:
    """Multi-head causal self-attention with one fused QKV projection.

    With `kv` (a function that stores this layer's new keys/values [B, H, T, D] in the cache
    and returns the layer's whole buffers [B, H, Tmax, D], see `cache.write`) the queries
    attend over the whole buffer under `mask`: static shapes, which is what lets a compiled
    decode step run without recompiling.
    """
    q, k, v = (
        rearrange(t, "... t (h d) -> ... h t d", h=n_head)
        for t in linear(x, p, "qkv", ops).chunk(3, dim=-1)
    )
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if kv is not None:
        k, v = kv(k, v)
        q = q.to(k.dtype)
    y = attend(q, k, v, mask)
    return linear(rearrange(y, "... h t d -> ... t (h d)"), p, "proj", ops)


def mlp_gelu(
    x: Tensor, p: dict[str, Tensor], approximate: str = "none", ops: Ops = PLAIN
) -> Tensor:
    """GELU MLP; approximate="tanh" is the tanh form GPT-2 was trained with (its `gelu_new`)."""
    return linear(F.gelu(linear(x, p, "fc", ops), approximate=approximate), p, "proj", ops)


def swiglu(x: Tensor, p: dict[str, Tensor], ops: Ops = PLAIN) -> Tensor:
    """SiLU-gated MLP; gate and up projections share one fused matmul (`fc_w` = [gate; up])."""
    gate, up = linear(x, p, "fc", ops).chunk(2, dim=-1)
    return linear(F.silu(gate) * up, p, "proj", ops)


def cross_entropy(
    logits: Tensor,
    targets: Tensor,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    weights: Tensor | None = None,
) -> Tensor:
    """Token cross-entropy in at least fp32 (also under autocast: bf16 logits are upcast;
    float64 ones stay float64), with optional label smoothing; `reduction="none"` gives
    each token's, flat.

    `weights` (shaped like `targets`, e.g. a chat mask of 1.0 on the assistant's tokens)
    makes the mean `weighted_mean` over the tokens instead; `reduction` is then ignored.
    Without weights the call is exactly the plain `F.cross_entropy` one, so an unweighted
    step's graph holds no extra op."""
    per_token = "none" if weights is not None else reduction
    losses = F.cross_entropy(
        logits.flatten(0, -2).to(torch.promote_types(logits.dtype, torch.float32)),
        targets.flatten(), label_smoothing=label_smoothing, reduction=per_token,
    )  # fmt: skip
    return losses if weights is None else weighted_mean(losses, weights.flatten())


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(w * v) / sum(w) over the last axis ([N] -> [], [E, N] -> [E]).

    Where the weights sum to 0 (a batch whose mask is all 0) the result is 0 and so is its
    gradient: the denominator becomes 1 there and the numerator is already 0, so nothing is
    divided by zero and no NaN reaches the gradients. Any other total, fractional ones
    included, divides exactly. The weights take the values' dtype (a no-op for fp32 ones).
    """
    weights = weights.to(values.dtype)
    total = weights.sum(-1)
    return (values * weights).sum(-1) / total.where(total > 0, 1.0)
