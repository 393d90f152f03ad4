"""Functional AdamW: `init(params) -> state`, `update(grads, state, params, lr, hp)`; the
optimizer protocol the train steps use (`Optimizer`: `hp.init`, `hp.update`, which
`muon.Muon` follows too); fp16 loss scaling, clipping and the learning-rate schedules.

State is data (an `OptState` of tensors), updates return new trees, and the arithmetic runs
through `torch._foreach_*` over flat leaf lists: a handful of multi-tensor kernels per step
rather than a Python loop over parameters, eager or compiled. The step counter and the
learning rate may be tensors, so a compiled train step never recompiles as they change.

In eager code (CPU or CUDA) the same step can run through torch's fused AdamW kernel
(`torch._fused_adamw_`, what `torch.optim.AdamW(fused=True)` calls): one pass over each
leaf's parameter, gradient and moments instead of a dozen `_foreach_*` passes, and a
kernel launch or two instead of a dozen per step, which is what an eager step on a GPU is
bound by at small sizes. That kernel writes in place, so it runs on fresh copies of the
parameters and moments (three multi-tensor copies): the update stays pure, the inputs
untouched. Compiled steps keep the `_foreach_*` form, which the compiler fuses itself.

Weight decay is decoupled (AdamW) and applied to >= 2-D weights only: norms and biases are
never decayed, and neither are the embedding tables `wte`/`wpe` (a choice, shared with the
original tool: decay pulls rarely-seen token rows towards zero). With tied weights the LM head
*is* `wte` and so is not decayed either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from .params import Params, tree_leaves, tree_map, tree_unflatten_like

NO_DECAY = frozenset({"wte", "wpe"})

Tensor = torch.Tensor
Scalar = float | Tensor


class Optimizer(Protocol):
    """What the train steps need of an optimizer: `init`, `update` and the names of the
    hyper-parameters an ensemble may give each member (`update`'s keyword arguments)."""

    member_hparams: tuple[str, ...]

    def init(self, params: Params) -> Any: ...

    def update(
        self, grads: Params, state: Any, params: Params, lr: Scalar, **hparams: Scalar
    ) -> tuple[Params, Any]: ...


@dataclass(frozen=True)
class AdamW:
    """AdamW hyper-parameters (torch.optim.AdamW's defaults, weight decay as in training).

    `fused`: None uses the fused kernel wherever it applies (`fused_refusal`), False never;
    True insists, and an update it cannot serve is an error rather than a silent fallback.
    """

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    fused: bool | None = None

    member_hparams = ("weight_decay",)  # what an ensemble may set per member

    def init(self, params: Params) -> OptState:
        return zeros(params)

    def update(
        self, grads: Params, state: OptState, params: Params, lr: Scalar, *,
        weight_decay: Scalar | None = None,
    ) -> tuple[Params, OptState]:  # fmt: skip
        return update(grads, state, params, lr, self, weight_decay=weight_decay)


class LossScale(NamedTuple):
    """Dynamic loss-scaling state for fp16 training (0-d float32 tensors)."""

    scale: Tensor
    good_steps: Tensor  # finite steps since the scale last changed


class OptState(NamedTuple):
    step: Tensor  # 0-d float32, number of updates applied
    mu: Params  # first moment
    nu: Params  # second moment


class ScaledState(NamedTuple):
    """An optimizer's state plus the loss scale, for fp16 training (a wrapper, as optax does)."""

    inner: Any
    loss_scale: LossScale


@dataclass(frozen=True)
class DynamicLossScale:
    """fp16 loss scaling: the loss is multiplied by `scale` before the backward pass so
    small gradients survive fp16, and the gradients are divided by it afterwards. A step
    whose gradients overflow is skipped and the scale divided by `factor`; after
    `growth_interval` finite steps in a row it is multiplied by `factor`."""

    init_scale: float = 2.0**16
    growth_interval: int = 2000
    factor: float = 2.0

    def init(self, device: torch.device | str | None = None) -> LossScale:
        return LossScale(
            torch.tensor(self.init_scale, device=device), torch.zeros((), device=device)
        )

    def adjust(self, state: LossScale, finite: Tensor) -> LossScale:
        good = torch.where(finite, state.good_steps + 1, torch.zeros_like(state.good_steps))
        grow = good >= self.growth_interval
        scale = torch.where(
            finite,
            torch.where(grow, state.scale * self.factor, state.scale),
            state.scale / self.factor,
        )
        return LossScale(scale, torch.where(grow, torch.zeros_like(good), good))


def decay_mask(params: Params, members: bool = False) -> Params:
    """A tree of bools: True where decoupled weight decay applies (see module docstring).

    members=True: leaves carry a leading ensemble axis, which does not count as a dimension.
    """
    min_dim = 3 if members else 2
    return {
        name: tree_map(lambda p, skip=name in NO_DECAY: not skip and p.ndim >= min_dim, sub)
        for name, sub in params.items()
    }


def init(
    params: Params, loss_scale: DynamicLossScale | None = None, hp: Optimizer | None = None
) -> Any:
    """Zeroed state of `hp` (AdamW by default); wrapped with a loss scale when `loss_scale`
    is given (fp16)."""
    state = zeros(params) if hp is None else hp.init(params)
    if loss_scale is None:
        return state
    return ScaledState(state, loss_scale.init(tree_leaves(params)[0].device))


def zeros(params: Params, device: torch.device | None = None) -> OptState:
    """Zeroed AdamW moments and step counter (on `device`, default the params')."""
    device = device or tree_leaves(params)[0].device
    return OptState(
        step=torch.zeros((), dtype=torch.float32, device=device),
        mu=tree_map(torch.zeros_like, params),
        nu=tree_map(torch.zeros_like, params),
    )


def scale_tree(tree: Params, factor: Tensor) -> Params:
    """Every leaf times `factor` (foreach outside transforms)."""
    leaves = tree_leaves(tree)
    out = [t * factor for t in leaves] if under_transform() else torch._foreach_mul(leaves, factor)
    return tree_unflatten_like(tree, out)


def keep_if(ok: Tensor, new: Params, old: Params) -> Params:
    """`new` where the 0-d bool `ok` holds, else `old`, leaf by leaf, without a host sync."""
    return tree_map(lambda n, o: torch.where(ok, n, o), new, old)


def under_transform() -> bool:
    """True inside `vmap`/`grad`: `torch._foreach_*` ops have no batching rules, so the
    optimizer falls back to per-leaf ops there (same arithmetic, one kernel per leaf)."""
    return torch._C._functorch.maybe_current_level() is not None


def global_norm(grads: Params, members: bool = False) -> Tensor:
    """L2 norm over all leaves, without a host sync.

    members=True: the leaves are stacked ensemble leaves [E, ...] and the result is one norm
    per member, [E] (each member's gradients reduced over all but the leading axis).
    Under `vmap` each leaf is normed on its own: `_foreach_norm` has no batching rule.
    """
    leaves = tree_leaves(grads)
    if members:
        norms = [torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim()))) for t in leaves]
    elif under_transform():
        norms = [torch.linalg.vector_norm(t) for t in leaves]
    else:
        norms = torch._foreach_norm(leaves)
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


def clip_by_global_norm(
    grads: Params, max_norm: float, members: bool = False
) -> tuple[Params, Tensor]:
    """Scale grads so their global norm is at most `max_norm` (<= 0 disables).

    Returns the clipped grads and the norm *before* clipping (the figure worth logging).
    members=True clips each member of stacked ensemble grads by its own norm.
    """
    norm = global_norm(grads, members)
    if max_norm <= 0:
        return grads, norm
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    if not members:
        return scale_tree(grads, coef), norm
    leaves = tree_leaves(grads)
    return tree_unflatten_like(grads, torch._foreach_mul(leaves, per_leaf(coef, leaves))), norm


def per_leaf(value: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """`value` [E] viewed as [E, 1, ...] against each stacked leaf, so a `_foreach_*` op
    broadcasts one scalar per ensemble member over that member's slice."""
    return [value.view(value.shape + (1,) * (t.dim() - value.dim())) for t in leaves]


def update(
    grads: Params,
    state: OptState,
    params: Params,
    lr: Scalar,
    hp: AdamW = AdamW(),
    *,
    weight_decay: Scalar | None = None,
) -> tuple[Params, OptState]:
    """One AdamW step; returns new params and state, leaving the inputs untouched.

    `weight_decay` overrides `hp.weight_decay`. For a stacked ensemble (leaves [E, ...],
    `state.step` [E]) `lr` and `weight_decay` may be [E] tensors: every member then moves
    with its own rate and decay, in the same few `_foreach_*` kernels as a single model.
    """
    wd = hp.weight_decay if weight_decay is None else weight_decay
    g = tree_leaves(grads)
    p, m, v = tree_leaves(params), tree_leaves(state.mu), tree_leaves(state.nu)
    decay = tree_leaves(decay_mask(params, members=state.step.dim() > 0))
    step = state.step + 1
    if hp.fused is not False:
        why_not = fused_refusal(p, step, lr, wd)
        if why_not is None:
            new_p, m, v = _fused_update(p, g, m, v, decay, step, lr, wd, hp)
            return tree_unflatten_like(params, new_p), OptState(
                step, tree_unflatten_like(params, m), tree_unflatten_like(params, v)
            )
        if hp.fused:
            raise ValueError(f"AdamW(fused=True) cannot run this update: {why_not}")
    bias1 = 1.0 - torch.pow(hp.b1, step)
    bias2_sqrt = torch.sqrt(1.0 - torch.pow(hp.b2, step))
    if under_transform():
        new = [
            _update_leaf(*leaf, lr=lr, wd=wd, bias1=bias1, bias2_sqrt=bias2_sqrt, hp=hp)
            for leaf in zip(p, g, m, v, decay, strict=True)
        ]
        p, m, v = (list(x) for x in zip(*new, strict=True))
        return tree_unflatten_like(params, p), OptState(
            step, tree_unflatten_like(params, m), tree_unflatten_like(params, v)
        )

    def scalars(x: Scalar, leaves: list[Tensor]) -> Scalar | list[Tensor]:
        return per_leaf(x, leaves) if isinstance(x, Tensor) and x.dim() else x

    m = torch._foreach_lerp(m, g, 1.0 - hp.b1)
    v = torch._foreach_mul(v, hp.b2)
    torch._foreach_addcmul_(v, g, g, value=1.0 - hp.b2)

    # upd = lr / bias1 * m / (sqrt(v / bias2) + eps), built in one temporary list.
    upd = torch._foreach_sqrt(v)
    torch._foreach_div_(upd, scalars(bias2_sqrt, upd))
    torch._foreach_add_(upd, hp.eps)
    torch._foreach_reciprocal_(upd)
    torch._foreach_mul_(upd, m)
    torch._foreach_mul_(upd, scalars(lr / bias1, upd))

    # Decayed leaves: p * (1 - lr * wd) - upd; the others: p - upd.
    decayed = [i for i, d in enumerate(decay) if d and (isinstance(wd, Tensor) or wd)]
    kept = [i for i in range(len(p)) if i not in set(decayed)]
    new_p: list[Tensor] = [None] * len(p)  # type: ignore[list-item]
    if decayed:
        shrink = [p[i] for i in decayed]
        shrunk = torch._foreach_mul(shrink, scalars(1.0 - lr * wd, shrink))
        torch._foreach_sub_(shrunk, [upd[i] for i in decayed])
        for i, x in zip(decayed, shrunk, strict=True):
            new_p[i] = x
    if kept:
        moved = torch._foreach_sub([p[i] for i in kept], [upd[i] for i in kept])
        for i, x in zip(kept, moved, strict=True):
            new_p[i] = x
    return tree_unflatten_like(params, new_p), OptState(
        step, tree_unflatten_like(params, m), tree_unflatten_like(params, v)
    )


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def fused_refusal(leaves: list[Tensor], step: Tensor, lr: Scalar, wd: Scalar) -> str | None:
    """Why the fused kernel cannot run this update, or None when it can: it needs plain eager
    code (no transform, not inside the compiler), one model (a 0-d step counter), a
    scalar rate and a float decay, and leaves of one float dtype on one CPU or CUDA device."""
    if under_transform() or torch.compiler.is_compiling():
        return "it runs in eager code only (not under vmap/grad or torch.compile)"
    if step.dim() or (isinstance(lr, Tensor) and lr.dim()):
        return "an ensemble's per-member rates need the _foreach_ form"
    if isinstance(wd, Tensor):
        return "the weight decay must be a float"
    first = leaves[0]
    if first.device.type not in ("cpu", "cuda") or first.dtype not in FUSED_DTYPES:
        return f"no fused kernel for {first.dtype} on {first.device.type}"
    if any(t.device != first.device or t.dtype != first.dtype for t in leaves):
        return "the leaves must share one device and dtype"
    return None


def _fused_update(
    p: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor], decay: list[bool],
    step: Tensor, lr: Scalar, wd: float, hp: AdamW,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:  # fmt: skip
    """`update`'s arithmetic through `torch._fused_adamw_`, on copies of p, m and v.

    The kernel reads the step (already advanced) per leaf and applies the decoupled decay
    itself, so it runs twice: once over the decayed leaves with `wd`, once over the rest
    with 0. A 0-d tensor rate stays a tensor (no host sync, no recompile)."""
    p, m, v = (_copies(leaves) for leaves in (p, m, v))
    lr = lr.to(p[0].device) if isinstance(lr, Tensor) else float(lr)
    for keep in (True, False):
        idx = [i for i, d in enumerate(decay) if bool(d and wd) == keep]
        if not idx:
            continue
        pp, pg, pm, pv = ([leaves[i] for i in idx] for leaves in (p, g, m, v))
        torch._fused_adamw_(
            pp, pg, pm, pv, [], [step] * len(idx),
            lr=lr, beta1=hp.b1, beta2=hp.b2, weight_decay=float(wd) if keep else 0.0,
            eps=hp.eps, amsgrad=False, maximize=False,
        )  # fmt: skip
    return p, m, v


def _copies(leaves: list[Tensor]) -> list[Tensor]:
    """Fresh copies: one multi-tensor kernel on CUDA; on the CPU, where `_foreach_*` ops
    loop over the leaves anyway, a plain clone of each is cheaper than a multiply by one."""
    if leaves[0].device.type == "cuda":
        return torch._foreach_mul(leaves, 1.0)
    return [t.clone() for t in leaves]


def _update_leaf(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, decay: bool, *,
    lr: Scalar, wd: Scalar, bias1: Tensor, bias2_sqrt: Tensor, hp: AdamW,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The AdamW arithmetic of `update` for one leaf (the path used under `vmap`)."""
    m = torch.lerp(m, g, 1.0 - hp.b1)
    v = v * hp.b2 + (1.0 - hp.b2) * g * g
    upd = m * (lr / bias1) / (v.sqrt() / bias2_sqrt + hp.eps)
    if decay and (isinstance(wd, Tensor) or wd):
        p = p * (1.0 - lr * wd)
    return p - upd, m, v


def constant(step: int, *, lr: float) -> float:
    return lr


def cosine_with_warmup(
    step: int, *, lr: float, warmup_iters: int, max_iters: int, min_lr: float
) -> float:
    """Linear warmup over `warmup_iters` steps (step 0 already moves), then cosine to `min_lr`.

    Past `max_iters` the rate stays at `min_lr`.
    """
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    span = max(1, max_iters - warmup_iters)
    progress = min(1.0, (step - warmup_iters) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def wsd(
    step: int, *, lr: float, warmup_iters: int, max_iters: int, min_lr: float,
    decay_fraction: float,
) -> float:  # fmt: skip
    """Warmup, stable, decay: linear warmup as in `cosine_with_warmup`, the peak rate until
    the last `decay_fraction` of `max_iters`, then a straight line down to `min_lr` at
    `max_iters` (and `min_lr` past it).

    The stable phase does not depend on the run's length, so a checkpoint taken in it (the
    trainer keeps `pre_decay.pt`, the state just before the first decay step) resumed with
    a later end continues exactly as a longer run from the start would: only the decay
    moves.
    """
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    decay_start = wsd_decay_start(warmup_iters, max_iters, decay_fraction)
    if step < decay_start:
        return lr
    progress = min(1.0, (step + 1 - decay_start) / max(1, max_iters - decay_start))
    return lr + (min_lr - lr) * progress


def wsd_decay_start(warmup_iters: int, max_iters: int, decay_fraction: float) -> int:
    """The first step of `wsd`'s decay (never inside the warmup)."""
    return max(warmup_iters, round(max_iters * (1.0 - decay_fraction)))
