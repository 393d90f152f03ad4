"""The arithmetic of Adam's direction, apart from the transformation that keeps its state
(`optim.scale_by_adam`): the same moments and direction in `torch._foreach_*` kernels (leaf
by leaf under a transform, which has no batching rules for them), or through torch's fused
AdamW kernel where that can run (`fused_refusal` says why not).

Each takes the flat lists of gradient, first- and second-moment leaves and the step count,
and returns (direction, new first moments, new second moments).
"""

from __future__ import annotations

import torch

from .params import under_transform

Tensor = torch.Tensor


def foreach_direction(g, m, v, count, b1, b2, eps):
    """Moments and direction in `_foreach_*` kernels (leaf by leaf under a transform)."""
    bias1 = 1.0 - torch.pow(b1, count)
    bias2_sqrt = torch.sqrt(1.0 - torch.pow(b2, count))
    if under_transform():
        m = [torch.lerp(mi, gi, 1.0 - b1) for mi, gi in zip(m, g, strict=True)]
        v = [vi * b2 + (1.0 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        out = [(vi.sqrt() / bias2_sqrt + eps).reciprocal() * mi / bias1  # the foreach order
               for mi, vi in zip(m, v, strict=True)]  # fmt: skip
        return out, m, v
    m = torch._foreach_lerp(m, g, 1.0 - b1)
    v = torch._foreach_mul(v, b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
    out = torch._foreach_sqrt(v)  # m / bias1 / (sqrt(v) / bias2_sqrt + eps), in one list
    torch._foreach_div_(out, bias2_sqrt)
    torch._foreach_add_(out, eps)
    torch._foreach_reciprocal_(out)
    torch._foreach_mul_(out, m)
    torch._foreach_div_(out, bias1)
    return out, m, v


def fused_direction(g, m, v, count, b1, b2, eps):
    """The same through `torch._fused_adamw_` (what torch.optim.AdamW(fused=True) calls):
    one pass over each leaf instead of a dozen, on copies of the moments, stepping a zero
    "parameter" at rate -1 so that it ends holding the direction."""
    copy = (lambda xs: torch._foreach_mul(xs, 1.0)) if g[0].is_cuda else (
        lambda xs: [t.clone() for t in xs])  # fmt: skip
    m, v, out = copy(m), copy(v), [torch.zeros_like(t) for t in g]
    torch._fused_adamw_(
        out, g, m, v, [], [count] * len(g), lr=-1.0, beta1=b1, beta2=b2, weight_decay=0.0,
        eps=eps, amsgrad=False, maximize=False,
    )  # fmt: skip
    return out, m, v


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def fused_refusal(leaves: list[Tensor]) -> str | None:
    """Why the fused kernel cannot run over these gradient leaves, or None when it can."""
    if under_transform() or torch.compiler.is_compiling():
        return "it runs in eager code only (not under vmap/grad or torch.compile)"
    if not leaves:
        return "there are no leaves"
    first = leaves[0]
    if first.device.type not in ("cpu", "cuda") or first.dtype not in FUSED_DTYPES:
        return f"no fused kernel for {first.dtype} on {first.device.type}"
    if any(t.device != first.device or t.dtype != first.dtype for t in leaves):
        return "the leaves must share one device and dtype"
    return None
