"""The member-stacked form of the primitives: E models whose every leaf carries one extra
leading axis (`params.stack`), run as one model in batched kernels.

Activations carry the member axis too ([E, B, T, C]) and dropout keys are [E]. Members
share nothing, so one forward over stacked params computes E models (bmm instead of mm)
under plain autograd, which on CPU is markedly cheaper than `vmap` over the member axis.
The forward takes these primitives (`OPS`) for a stacked tree (`is_stacked`); attention,
activations and dropout need no member form (they act on leading axes as batch axes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import layers
from .layers import LAYER_NORM_EPS, RMS_NORM_EPS, Ops
from .params import Params

Tensor = torch.Tensor


def is_stacked(params: Params) -> bool:
    """Whether `params` is a stacked ensemble: its token table [E, V, C] has a member axis."""
    return params["wte"].dim() == 3


def _per_member(v: Tensor, x: Tensor) -> Tensor:
    """A per-member vector v [E, C] viewed as [E, 1, ..., C] against activations x [E, ..., C]."""
    return v.view(v.shape[0], *(1,) * (x.dim() - 2), v.shape[-1])


def embedding(weight: Tensor, idx: Tensor) -> Tensor:
    """Each member reads its own table (weight [E, V, C], idx [E, ...]): one lookup in the
    flattened [E*V, C] table. An idx [T] (positions shared by every member and row) reads
    as [E, 1, T]."""
    E, V = weight.shape[:2]
    if idx.dim() == 1:
        idx = idx.expand(E, 1, idx.shape[0])
    offsets = torch.arange(E, device=idx.device).view(E, *(1,) * (idx.dim() - 1)) * V
    return F.embedding(idx + offsets, weight.flatten(0, 1))


def project(x: Tensor, w: Tensor, b: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x [E, ..., in] @ w[E, out, in].T (+ b [E, out]): one batched matmul."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    y = torch.bmm(flat, w.mT) if b is None else torch.baddbmm(b.unsqueeze(1), flat, w.mT)
    return y.view(*x.shape[:-1], w.shape[1])


def layer_norm(x: Tensor, p: dict[str, Tensor], eps: float = LAYER_NORM_EPS) -> Tensor:
    """LayerNorm with each member's own weight (and bias) [E, C]."""
    y = F.layer_norm(x, (x.shape[-1],), None, None, eps)
    w, b = _per_member(p["w"], x), p.get("b")
    return y * w if b is None else torch.addcmul(_per_member(b, x), y, w)


def rms_norm(x: Tensor, p: dict[str, Tensor], eps: float = RMS_NORM_EPS) -> Tensor:
    """RMSNorm with each member's own weight [E, C]."""
    return F.rms_norm(x, (x.shape[-1],), None, eps) * _per_member(p["w"], x)


def cross_entropy(
    logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, weights: Tensor | None = None
) -> Tensor:
    """Each member's mean token cross-entropy, [E], of logits [E, ..., V]; with `weights`
    (targets' shape, member axis first) each member's `layers.weighted_mean`, so a member
    whose mask is all 0 gets loss 0 and no gradient while the others train."""
    losses = layers.cross_entropy(logits, targets, label_smoothing, reduction="none")
    losses = losses.view(logits.shape[0], -1)
    if weights is None:
        return losses.mean(1)
    return layers.weighted_mean(losses, weights.reshape(logits.shape[0], -1))


OPS = Ops(embedding, project, layer_norm, rms_norm)
