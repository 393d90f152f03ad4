"""Pure building blocks of the three GPT variants.

Every function takes tensors (and small dicts of tensors) and returns new tensors: no module
state, no global RNG. A parameter dict names its weights `<name>_w` and its optional biases
`<name>_b`, so a biasless variant is simply one whose dict has no `_b` entries.

Ensembles: every parameter may carry one extra leading member axis E (`params.stack`), the
activations then carry it too ([E, B, T, C]) and dropout keys are [E]. Members share nothing,
so one forward over stacked params computes E models in batched kernels (bmm instead of mm)
under plain autograd, which on CPU is markedly cheaper than `vmap` over the member axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from . import rng

Tensor = torch.Tensor
LAYER_NORM_EPS = 1e-5
RMS_NORM_EPS = 1e-6
Attend = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def _per_member(v: Tensor, x: Tensor) -> Tensor:
    """A per-member vector v [E, C] viewed as [E, 1, ..., C] against activations x [E, ..., C]."""
    return v.view(v.shape[0], *(1,) * (x.dim() - 2), v.shape[-1])


def embedding(weight: Tensor, idx: Tensor) -> Tensor:
    """Rows of `weight` [V, C] for `idx`; with members (weight [E, V, C], idx [E, ...]) each
    member reads its own table: one lookup in the flattened [E*V, C] table."""
    if weight.dim() == 2:
        return F.embedding(idx, weight)
    E, V = weight.shape[:2]
    offsets = torch.arange(E, device=idx.device).view(E, *(1,) * (idx.dim() - 1)) * V
    return F.embedding(idx + offsets, weight.flatten(0, 1))


def project(x: Tensor, w: Tensor, b: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x @ w.T (+ b); with members (w [E, out, in]) one batched matmul over x [E, ..., in].

    Weights quantised to int8 (`quantize.quantize`) carry a per-output-row `scale`.
    A single row under the compiler (decoding at batch 1) is written as a product and a
    sum, which the compiler fuses into one pass over the weights at their stored width: on
    CPU about 4x the library's matrix-vector product in fp32, and the only form in which
    int8 or bf16 weights are read as such rather than widened to a temporary first.
    """
    if w.dim() == 3:
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        y = torch.bmm(flat, w.mT) if b is None else torch.baddbmm(b.unsqueeze(1), flat, w.mT)
        return y.view(*x.shape[:-1], w.shape[1])
    if torch.compiler.is_compiling() and x.shape[:-1].numel() == 1:
        y = (x.unsqueeze(-2) * w.to(x.dtype)).sum(-1)
    elif w.dtype == torch.int8:
        y = F.linear(x, w.to(x.dtype))
    else:
        return F.linear(x, w, b)
    if scale is not None:
        y = y * scale.to(y.dtype)
    return y if b is None else y + b


def linear(x: Tensor, p: dict[str, Tensor], name: str) -> Tensor:
    return project(x, p[f"{name}_w"], p.get(f"{name}_b"), p.get(f"{name}_scale"))


def layer_norm(x: Tensor, p: dict[str, Tensor], eps: float = LAYER_NORM_EPS) -> Tensor:
    w, b = p["w"], p.get("b")
    if w.dim() == 1:
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    y = F.layer_norm(x, (x.shape[-1],), None, None, eps)
    return (
        y * _per_member(w, x)
        if b is None
        else torch.addcmul(_per_member(b, x), y, _per_member(w, x))
    )


def rms_norm(x: Tensor, p: dict[str, Tensor], eps: float = RMS_NORM_EPS) -> Tensor:
    w = p["w"]
    if w.dim() == 1:
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return F.rms_norm(x, (x.shape[-1],), None, eps) * _per_member(w, x)


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
) -> Tensor:
    """Multi-head causal self-attention with one fused QKV projection.

    With `kv` (a function that stores this layer's new keys/values [B, H, T, D] in the cache
    and returns the layer's whole buffers [B, H, Tmax, D], see `cache.write`) the queries
    attend over the whole buffer under `mask`: static shapes, which is what lets a compiled
    decode step run without recompiling.
    """
    q, k, v = (
        rearrange(t, "... t (h d) -> ... h t d", h=n_head)
        for t in linear(x, p, "qkv").chunk(3, dim=-1)
    )
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if kv is not None:
        k, v = kv(k, v)
        q = q.to(k.dtype)
    y = attend(q, k, v, mask)
    return linear(rearrange(y, "... h t d -> ... t (h d)"), p, "proj")


def mlp_gelu(x: Tensor, p: dict[str, Tensor], approximate: str = "none") -> Tensor:
    """GELU MLP; approximate="tanh" is the tanh form GPT-2 was trained with (its `gelu_new`)."""
    return linear(F.gelu(linear(x, p, "fc"), approximate=approximate), p, "proj")


def swiglu(x: Tensor, p: dict[str, Tensor]) -> Tensor:
    """SiLU-gated MLP; gate and up projections share one fused matmul (`fc_w` = [gate; up])."""
    gate, up = linear(x, p, "fc").chunk(2, dim=-1)
    return linear(F.silu(gate) * up, p, "proj")


def cross_entropy(
    logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, members: bool = False
) -> Tensor:
    """Mean token cross-entropy in at least fp32 (also under autocast: bf16 logits are
    upcast; float64 ones stay float64), with optional label smoothing.

    members=True: logits [E, ..., V] of an ensemble; returns each member's mean, [E].
    """
    losses = F.cross_entropy(
        logits.flatten(0, -2).to(torch.promote_types(logits.dtype, torch.float32)),
        targets.flatten(), label_smoothing=label_smoothing,
        reduction="none" if members else "mean",
    )  # fmt: skip
    return losses.view(logits.shape[0], -1).mean(1) if members else losses
