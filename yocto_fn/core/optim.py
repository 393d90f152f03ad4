"""Optimizers as gradient transformations, optax's protocol in torch.

A `GradientTransformation` is a pair of pure functions: `init(params) -> state` and
`update(updates, state, params) -> (updates, state)`. An optimizer is a chain of small
links, each doing one thing to the updates (clip them, scale them by Adam's moments, add the
decay, multiply by the rate), and `apply_updates(params, updates)` adds the result. The sign
lives in one link: `scale_by_learning_rate(lr)` multiplies by -lr.

    adamw = chain(scale_by_adam(b1, b2, eps), add_decayed_weights(wd, decay_mask),
                  scale_by_learning_rate(lr))
    muon = partition({"muon": <Newton-Schulz chain>, "adamw": adamw}, muon.label)

`partition` routes leaves by a label of their dotted name, and `inject_hyperparams` moves
hyper-parameters into the state as tensors: a schedule changes them with `set_hparams`
without a recompile, and a stacked ensemble's state holds an [E] tensor, one value per
member, which each member sees as its own scalar under `vmap` (as optax does).

State is data: NamedTuples, tuples and dicts of tensors. The arithmetic runs through
`torch._foreach_*` over flat leaf lists (a few multi-tensor kernels per step, eager or
compiled); under a transform (`vmap`), which has no batching rules for them, it runs leaf by
leaf with the same arithmetic.

Weight decay is decoupled and, in `adamw` and `muon`, masked by `decay_mask`: >= 2-D weights
only, and never the embedding tables `wte`/`wpe` (decay pulls rarely seen token rows towards
zero; with tied weights the head *is* `wte`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..device import floats_on
from .adam_kernels import foreach_direction, fused_direction, fused_refusal
from .params import Params, named_leaves, tree_leaves, tree_map, tree_unflatten_like
from .params import under_transform as _per_leaf

Tensor = torch.Tensor
Scalar = float | Tensor
Updates = Params
Schedule = Callable[[Tensor], Scalar]
LeafPredicate = Callable[[str, Tensor], bool]
NO_DECAY = frozenset({"wte", "wpe"})


class GradientTransformation(NamedTuple):
    """`init(params) -> state`; `update(updates, state, params=None) -> (updates, state)`."""

    init: Callable[[Params], Any]
    update: Callable[..., tuple[Updates, Any]]


class EmptyState(NamedTuple):
    """The state of a link that keeps none."""


def _device(tree: Any) -> torch.device:
    leaves = tree_leaves(tree)
    return leaves[0].device if leaves else torch.device("cpu")


def _stateless(fn: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    return GradientTransformation(
        lambda params: EmptyState(), lambda u, state, params=None: (fn(u, params), state)
    )


def _mul(leaves: list[Tensor], factor: Scalar) -> list[Tensor]:
    return [t * factor for t in leaves] if _per_leaf() else torch._foreach_mul(leaves, factor)


def _add(a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    if _per_leaf():
        return [x + y for x, y in zip(a, b, strict=True)]
    return torch._foreach_add(a, b)


def apply_updates(params: Params, updates: Updates) -> Params:
    """`params + updates`, leaf by leaf, in each param's dtype (a new tree)."""
    p, u = tree_leaves(params), tree_leaves(updates)
    u = [x.to(q.dtype) for x, q in zip(u, p, strict=True)]
    return tree_unflatten_like(params, _add(p, u))


def global_norm(tree: Params) -> Tensor:
    """The L2 norm over all leaves, without a host sync."""
    leaves = tree_leaves(tree)
    if _per_leaf():
        norms = [torch.linalg.vector_norm(t) for t in leaves]
    else:
        norms = torch._foreach_norm(leaves)
    return torch.linalg.vector_norm(torch.stack(norms))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """The links applied in order; the state is the tuple of their states."""

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(updates: Updates, state: tuple, params: Params | None = None):
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def partition(
    transforms: dict[str, GradientTransformation], label_fn: Callable[[str, Tensor], str]
) -> GradientTransformation:
    """Each leaf to the transformation of its label, `label_fn(dotted_name, leaf)`.

    A transformation sees only its own leaves, as a flat dict by dotted name
    (`{"blocks.0.attn.qkv_w": ...}`); the state is a dict of their states by label (a label
    no leaf has keeps none)."""

    def groups(tree: Params, like: Params) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {}
        for (name, leaf), ref in zip(named_leaves(tree).items(), tree_leaves(like), strict=True):
            label = label_fn(name, ref)
            if label not in transforms:
                raise ValueError(f"partition: leaf {name} has label {label!r}, which has no "
                                 f"transformation (labels: {', '.join(transforms)})")  # fmt: skip
            out.setdefault(label, {})[name] = leaf
        return out

    def init(params: Params) -> dict[str, Any]:
        found = groups(params, params)
        return {label: t.init(found[label]) for label, t in transforms.items() if label in found}

    def update(updates: Updates, state: dict[str, Any], params: Params | None = None):
        like = updates if params is None else params
        u, p = groups(updates, like), groups(like, like)
        merged: dict[str, Tensor] = {}
        new_state = {}
        for label, s in state.items():
            out, new_state[label] = transforms[label].update(u[label], s, p[label])
            merged.update(out)
        return tree_unflatten_like(updates, [merged[n] for n in named_leaves(updates)]), new_state

    return GradientTransformation(init, update)


class InjectState(NamedTuple):
    hparams: dict[str, Tensor]  # float32, 0-d (or [E] for a stacked ensemble)
    inner: Any


def inject_hyperparams(
    factory: Callable[..., GradientTransformation],
) -> Callable[..., GradientTransformation]:
    """`inject_hyperparams(adamw)(lr=1e-3, weight_decay=0.1)`: the numeric arguments become
    tensors in the state, and each update rebuilds `factory(**them)` from the state. Change
    them between steps with `set_hparams`; other arguments are fixed."""

    def bind(**kwargs: Any) -> GradientTransformation:
        numeric = {k: v for k, v in kwargs.items()
                   if isinstance(v, (int, float, Tensor)) and not isinstance(v, bool)}  # fmt: skip
        fixed = {k: v for k, v in kwargs.items() if k not in numeric}

        def init(params: Params) -> InjectState:
            values = {k: floats_on(v, _device(params)) for k, v in numeric.items()}
            return InjectState(values, factory(**fixed, **values).init(params))

        def update(updates: Updates, state: InjectState, params: Params | None = None):
            updates, inner = factory(**fixed, **state.hparams).update(updates, state.inner, params)
            return updates, InjectState(state.hparams, inner)

        return GradientTransformation(init, update)

    return bind


def _replace(tree: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """`tree` with every `kind` node replaced by `fn(node)` (nodes inside it first)."""
    if isinstance(tree, dict):
        return {k: _replace(v, kind, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_replace(v, kind, fn) for v in tree]
    if isinstance(tree, tuple):
        parts = [_replace(v, kind, fn) for v in tree]
        tree = type(tree)._make(parts) if hasattr(tree, "_fields") else tuple(parts)
        return fn(tree) if isinstance(tree, kind) else tree
    return tree


def hparams(state: Any) -> dict[str, Tensor]:
    """The injected hyper-parameters of an optimizer state, by name."""
    found: dict[str, Tensor] = {}
    _replace(state, InjectState, lambda node: found.update(node.hparams) or node)
    return found


def set_hparams(state: Any, **values: Scalar) -> Any:
    """The state with injected hyper-parameters set: floats or tensors, broadcast to each
    stored value's shape (a scalar gives every ensemble member the same value). A name no
    `inject_hyperparams` link holds is an error, so a misspelt one never goes unnoticed."""
    unknown = set(values) - set(hparams(state))
    if unknown:
        have = ", ".join(sorted(hparams(state))) or "none"
        raise TypeError(f"the optimizer has no hyper-parameter {', '.join(sorted(unknown))} "
                        f"(it has: {have})")  # fmt: skip

    def put(node: InjectState) -> InjectState:
        new = {k: _like(values[k], old) if k in values else old
               for k, old in node.hparams.items()}  # fmt: skip
        return InjectState(new, node.inner)

    return _replace(state, InjectState, put)


def _like(value: Scalar, old: Tensor) -> Tensor:
    """`value` as a float32 tensor of `old`'s device and shape (a scalar is broadcast)."""
    return floats_on(value, old.device).expand(old.shape).contiguous()


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale the updates so their global norm is at most `max_norm` (<= 0: unchanged), as
    `torch.nn.utils.clip_grad_norm_` does (the norm plus 1e-6 in the divisor)."""

    def clip(u: Updates, params: Params | None) -> Updates:
        if max_norm <= 0:
            return u
        coef = torch.clamp(max_norm / (global_norm(u) + 1e-6), max=1.0)
        return tree_unflatten_like(u, _mul(tree_leaves(u), coef))

    return _stateless(clip)


def scale(factor: Scalar) -> GradientTransformation:
    """Multiply the updates by `factor`."""
    return _stateless(lambda u, params: tree_unflatten_like(u, _mul(tree_leaves(u), factor)))


class ScaleByScheduleState(NamedTuple):
    count: Tensor  # 0-d float32, updates so far


def scale_by_learning_rate(lr: Scalar | Schedule) -> GradientTransformation:
    """Multiply by -lr: the descent's sign. `lr` is a float, a tensor, or a schedule
    `lr(count)` of the 0-d float32 count of updates so far (torch ops, so it compiles)."""
    if not callable(lr):
        return scale(-lr)

    def init(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(torch.zeros((), device=_device(params)))

    def update(updates: Updates, state: ScaleByScheduleState, params: Params | None = None):
        moved = _mul(tree_leaves(updates), -lr(state.count))
        return tree_unflatten_like(updates, moved), ScaleByScheduleState(state.count + 1)

    return GradientTransformation(init, update)


def decay_mask(name: str, leaf: Tensor) -> bool:
    """Whether decoupled weight decay applies to a leaf (see the module docstring)."""
    return name.split(".", 1)[0] not in NO_DECAY and leaf.dim() >= 2


def add_decayed_weights(
    weight_decay: Scalar, mask: LeafPredicate | None = None
) -> GradientTransformation:
    """`updates + weight_decay * params` on the leaves `mask(name, leaf)` admits (all when
    None). Before the rate link this is decoupled decay: the step shrinks p by lr * wd."""

    def decay(u: Updates, params: Params | None) -> Updates:
        if params is None:
            raise ValueError("add_decayed_weights needs the params: update(updates, state, params)")
        if not isinstance(weight_decay, Tensor) and weight_decay == 0:
            return u
        names, ups, ps = list(named_leaves(u)), tree_leaves(u), tree_leaves(params)
        idx = [i for i, n in enumerate(names) if mask is None or mask(n, ps[i])]
        out = list(ups)
        if idx and not _per_leaf() and not isinstance(weight_decay, Tensor):
            shrunk = torch._foreach_add([ups[i] for i in idx], [ps[i] for i in idx],
                                        alpha=weight_decay)  # one pass  # fmt: skip
        elif idx:
            shrunk = _add(_mul([ps[i] for i in idx], weight_decay), [ups[i] for i in idx])
        for i, x in zip(idx, shrunk if idx else [], strict=True):
            out[i] = x
        return tree_unflatten_like(u, out)

    return _stateless(decay)


class AdamState(NamedTuple):
    count: Tensor  # 0-d float32, updates so far
    mu: Params  # first moment
    nu: Params  # second moment


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, fused: bool | None = None
) -> GradientTransformation:
    """Adam's direction, m_hat / (sqrt(v_hat) + eps), from moments kept in the state.

    `fused`: None runs torch's fused Adam kernel where it applies (plain eager code, leaves
    of one float dtype on one CPU or CUDA device: `fused_refusal`), False never, True
    insists (an update it cannot serve is an error). The kernel writes in place, so it runs
    on copies of the moments; it computes the direction as the step of a zero parameter at
    rate -1."""

    def init(params: Params) -> AdamState:
        count = torch.zeros((), device=_device(params))
        return AdamState(
            count, tree_map(torch.zeros_like, params), tree_map(torch.zeros_like, params)
        )

    def update(updates: Updates, state: AdamState, params: Params | None = None):
        count = state.count + 1
        g, m, v = tree_leaves(updates), tree_leaves(state.mu), tree_leaves(state.nu)
        why_not = None if fused is False else fused_refusal(g)
        if fused and why_not:
            raise ValueError(f"scale_by_adam(fused=True) cannot run this update: {why_not}")
        if fused is not False and why_not is None:
            out, m, v = fused_direction(g, m, v, count, b1, b2, eps)
        else:
            out, m, v = foreach_direction(g, m, v, count, b1, b2, eps)
        new = AdamState(count, tree_unflatten_like(state.mu, m), tree_unflatten_like(state.nu, v))
        return tree_unflatten_like(updates, out), new

    return GradientTransformation(init, update)


def adamw(
    lr: Scalar | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    weight_decay: Scalar = 0.1, mask: LeafPredicate | None = decay_mask, *,
    fused: bool | None = None,
) -> GradientTransformation:  # fmt: skip
    """AdamW as torch.optim.AdamW computes it, with decoupled decay on `mask`'s leaves."""
    return chain(
        scale_by_adam(b1, b2, eps, fused=fused),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )


class LossScaleState(NamedTuple):
    scale: Tensor  # 0-d float32, what the loss is multiplied by before the backward pass
    good_steps: Tensor  # finite steps since the scale last changed
    inner: Any


def dynamic_loss_scale(
    inner: GradientTransformation, init_scale: float = 2.0**16, growth_interval: int = 2000,
    factor: float = 2.0,
) -> GradientTransformation:  # fmt: skip
    """fp16 loss scaling around `inner`: the train step multiplies the loss by the state's
    scale (`loss_scale`), and this link divides the gradients by it. A step whose gradients
    are not finite changes nothing (zero updates, `inner`'s state kept) and divides the
    scale by `factor`; after `growth_interval` finite steps in a row it is multiplied."""

    def init(params: Params) -> LossScaleState:
        device = _device(params)
        return LossScaleState(torch.full((), init_scale, device=device),
                              torch.zeros((), device=device), inner.init(params))  # fmt: skip

    def update(updates: Updates, state: LossScaleState, params: Params | None = None):
        leaves = _mul(tree_leaves(updates), 1.0 / state.scale)
        finite = torch.isfinite(global_norm(leaves))
        new_u, new_inner = inner.update(tree_unflatten_like(updates, leaves), state.inner, params)
        new_u = tree_map(lambda x: torch.where(finite, x, torch.zeros_like(x)), new_u)
        new_inner = tree_map(lambda n, o: torch.where(finite, n, o), new_inner, state.inner)
        good = torch.where(finite, state.good_steps + 1, torch.zeros_like(state.good_steps))
        grow = good >= growth_interval
        scaled = torch.where(grow, state.scale * factor, state.scale)
        new_scale = torch.where(finite, scaled, state.scale / factor)
        return new_u, LossScaleState(new_scale, torch.where(grow, 0.0, good), new_inner)

    return GradientTransformation(init, update)


def loss_scale(state: Any) -> Tensor | None:
    """The loss scale of a `dynamic_loss_scale` state (its outermost link), else None."""
    return state.scale if isinstance(state, LossScaleState) else None
