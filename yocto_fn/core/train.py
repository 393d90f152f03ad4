"""The pure train step: the loss, its gradients by `torch.func`, and any optimizer (an
`optim.GradientTransformation`) in one function.

`make_train_step` returns `step(params, opt_state, batch, key, **hparams) -> (params,
opt_state, metrics)`. Because the whole step is one pure function of tensors it can be
compiled whole (forward, backward and optimizer fuse into one graph), `vmap`ped over an
ensemble axis, or wrapped by gradient averaging for data parallelism (with an optional
`stop` flag that rides the same all-reduce). Clipping, weight decay, the rates and fp16 loss
scaling are links of the optimizer's chain, not code of the step.

`compile=True` calls `torch.compile` with static shapes and nothing else: compiler settings
(the GCC flag of `yocto_fn.jit`) are the host's to apply before it builds a compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from ..device import autocast, floats_on
from . import layers, optim, rng
from .config import ModelConfig
from .members import cross_entropy as member_cross_entropy
from .models import Model
from .params import Params, tree_leaves, tree_map, tree_unflatten_like, under_transform

# (x, y) token ids [B, T], or (x, y, w) with w float32 per-token loss weights shaped like y
# (the chat mask: 1.0 on the assistant's tokens). Any leading axes (members, micro-batches)
# ride every element alike.
Batch = tuple[torch.Tensor, ...]
Metrics = dict[str, torch.Tensor]
TrainStep = Callable[..., tuple[Params, Any, Metrics]]


def compiled(fn: Callable) -> Callable:
    """`torch.compile` for fixed shapes: a new shape is a new graph, never a dynamic one."""
    return torch.compile(fn, dynamic=False)


def grad_and_value(
    fn: Callable[..., torch.Tensor], eager_autograd: bool = True, has_aux: bool = False
) -> Callable[..., tuple[Params, torch.Tensor]]:
    """`torch.func.grad_and_value(fn, has_aux=has_aux)` (gradient w.r.t. the first argument,
    a params tree; with `has_aux`, fn returns (value, aux) and this returns (grads, (value,
    aux))).

    Under a transform (`vmap`, an outer `grad`) or inside `torch.compile` this *is*
    `torch.func.grad_and_value`. In plain eager code it runs the same reverse pass through
    `torch.autograd.grad` directly: torch.func always asks autograd for a differentiable
    backward graph (`create_graph=True`, needed only when another transform wraps it), which
    costs a few percent of an eager CPU step. Values and gradients are the same either way;
    `eager_autograd=False` always uses torch.func (to measure that cost).
    """
    transformed = torch.func.grad_and_value(fn, has_aux=has_aux)
    if not eager_autograd:
        return transformed

    def eager(params: Params, *args, **kwargs) -> tuple[Params, torch.Tensor]:
        if torch.compiler.is_compiling() or under_transform():
            return transformed(params, *args, **kwargs)
        leaves = [p.detach().requires_grad_() for p in tree_leaves(params)]
        with torch.enable_grad():
            out = fn(tree_unflatten_like(params, leaves), *args, **kwargs)
        value, aux = out if has_aux else (out, None)
        grads = torch.autograd.grad(value, leaves, materialize_grads=True)  # zeros if unused
        grads = tree_unflatten_like(params, list(grads))
        if has_aux:
            return grads, (value.detach(), tree_map(torch.Tensor.detach, aux))
        return grads, value.detach()

    return eager


def split_batch(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, y, w) of a batch, w None for a plain (x, y) one: the one place that reads the
    batch's form, so every caller takes either."""
    if len(batch) == 2:
        x, y = batch
        return x, y, None
    x, y, w = batch
    return x, y, w


def loss_fn(
    params: Params,
    batch: Batch,
    key: torch.Tensor | None,
    *,
    model: Model,
    cfg: ModelConfig,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    train: bool = True,
    activation_checkpointing: bool = False,
    members: bool = False,
) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch = (x, y)`; `key` drives dropout.

    `batch = (x, y, w)`: the mean over the weighted tokens, sum(w * ce) / sum(w)
    (`layers.weighted_mean`); a batch whose mask is all 0 has loss 0 and zero gradients, so
    it adds nothing and does not divide by zero. Label smoothing applies per token first.

    members=True: an ensemble (params, x, y, w and key with a leading member axis E, see
    `layers`); returns each member's mean loss, [E].
    """
    x, y, w = split_batch(batch)
    with autocast(x.device.type, amp_dtype):
        logits, _ = model.forward(
            params, x, cfg, train=train, dropout_key=key,
            activation_checkpointing=activation_checkpointing,
        )  # fmt: skip
    loss = member_cross_entropy if members else layers.cross_entropy
    return loss(logits, y, label_smoothing, weights=w)


def accumulate_grads(
    grads_of: Callable[[Batch, torch.Tensor | None], tuple[Params, torch.Tensor]],
    batch: Batch,
    key: torch.Tensor | None,
    axis: int = 0,
) -> tuple[Params, torch.Tensor]:
    """Mean gradients and loss over the micro-batches along `axis` of every tensor of
    `batch` ((x, y) or (x, y, w)).

    Micro-batch i is drawn with key fold_in(key, i); the sum runs in place over the leaves
    (`_foreach_add_`), so only one extra gradient tree is alive at a time. With weights each
    micro-batch's loss is its own weighted mean and the step averages those equally: that is
    the weighted mean of the whole batch only when every micro-batch holds the same total
    weight (a micro-batch with a mask of all 0 still counts, as a 0).
    """
    n = batch[0].shape[axis]
    grads, total = None, 0.0
    for i in range(n):
        micro = tuple(t.select(axis, i) for t in batch)
        g, value = grads_of(micro, None if key is None else rng.fold_in(key, i))
        if grads is None:
            grads = g
        else:
            torch._foreach_add_(tree_leaves(grads), tree_leaves(g))
        total = total + value
    torch._foreach_div_(tree_leaves(grads), n)
    return grads, total / n


def make_train_step(
    model: Model,
    cfg: ModelConfig,
    tx: optim.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    compile: bool = False,
    eager_autograd: bool = True,
    activation_checkpointing: bool = False,
    grad_sync: Callable[[Params, torch.Tensor], tuple[Params, torch.Tensor]] | None = None,
) -> TrainStep:
    """Build `step(params, opt_state, batch, key=None, *, stop=None, **hparams) -> (params,
    opt_state, metrics)` for the optimizer `tx` (state: `tx.init(params)`).

    `hparams` set the optimizer's injected hyper-parameters for this step
    (`optim.set_hparams`: `lr=`, `muon_lr=`, ...): floats or 0-d tensors, all tensors before
    the compiled region, so a schedule never triggers a recompile. `key` (an `rng` key)
    drives dropout. metrics = {"loss", "grad_norm"} as 0-d tensors (no host sync inside the
    step); grad_norm is the gradients' global norm before any clipping.

    batch: (x, y) of [B, T], or (x, y, w) with per-token loss weights w (see `loss_fn`).

    Gradient accumulation: give every tensor of `batch` a leading micro-batch axis, [A, B,
    T]; the step averages the A micro-batch gradients (micro-batch i uses key fold_in(key,
    i)), which equals one batch of A*B rows (with weights: when the micro-batches' total
    weights are equal, see `accumulate_grads`). `eager_autograd` is passed to
    `grad_and_value`.

    Data parallelism: `grad_sync(grads, value) -> (grads, value)` runs once per step on the
    accumulated gradients, before the optimizer (e.g. `distributed.average`, one
    all-reduce). `step(..., stop=flag)` (a 0-d tensor, 1.0 where this rank was asked to
    stop) sends the flag through that same call, as `value = [loss, flag]`, and returns its
    mean over the ranks as metrics["stop"]: non-zero on every rank as soon as one rank
    asked, so the ranks agree on stopping after this step without a collective of its own.

    fp16: with `tx = optim.dynamic_loss_scale(inner)` the loss is multiplied by the state's
    scale before the backward pass, and that link unscales the gradients and skips a step
    whose gradients overflowed.
    """
    loss = partial(
        loss_fn, model=model, cfg=cfg, label_smoothing=label_smoothing, amp_dtype=amp_dtype,
        activation_checkpointing=activation_checkpointing,
    )  # fmt: skip
    # Checkpointing needs autograd's saved-tensor hooks, which torch.func's grad turns off:
    # compiled, the forward is compiled on its own (the compiler derives its backward and
    # recomputes the checkpointed blocks there) and the optimizer apart from it.
    split = compile and activation_checkpointing
    if split:
        loss = compiled(loss)
    grad_and_loss = grad_and_value(loss, eager_autograd)
    grad_and_scaled_loss = grad_and_value(lambda p, b, k, s: loss(p, b, k) * s, eager_autograd)

    def grads_of(params, batch, key, scale):
        """Gradients (times the loss scale, if any: its link divides it out) and the loss."""
        if scale is None:
            return grad_and_loss(params, batch, key)
        grads, value = grad_and_scaled_loss(params, batch, key, scale)
        return grads, value / scale

    def accumulate(params, batch, key, scale):
        if batch[0].dim() == 2:
            return grads_of(params, batch, key, scale)
        micro = lambda b, k: grads_of(params, b, k, scale)  # noqa: E731
        return accumulate_grads(micro, batch, key)

    def synced(grads, value, stop):
        """`grad_sync` of the gradients, the loss and the stop flag (when given): one call."""
        if grad_sync is None:
            return grads, value, stop
        if stop is None:
            return *grad_sync(grads, value), None
        grads, both = grad_sync(grads, torch.stack([value, stop.to(value.dtype)]))
        return grads, both[0], both[1]

    def apply(grads, value, params, opt_state, hparams):
        """The optimizer's update, applied."""
        scale = optim.loss_scale(opt_state)
        norm = optim.global_norm(grads)
        if hparams:
            opt_state = optim.set_hparams(opt_state, **hparams)
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics = {"loss": value.detach(), "grad_norm": norm if scale is None else norm / scale}
        return optim.apply_updates(params, updates), opt_state, metrics

    def with_stop(out, stop):
        params, opt_state, metrics = out
        return params, opt_state, metrics if stop is None else metrics | {"stop": stop}

    apply_fn = compiled(apply) if split else apply

    def pure_step(params, opt_state, batch, key, stop, hparams):
        grads, value = accumulate(params, batch, key, optim.loss_scale(opt_state))
        grads, value, stop = synced(grads, value, stop)
        return with_stop(apply_fn(grads, value, params, opt_state, hparams), stop)

    inner = compiled(pure_step) if compile and not split else pure_step

    def step(params, opt_state, batch, key=None, *, stop=None, **hparams):
        device = tree_leaves(params)[0].device
        hparams = {k: floats_on(v, device) for k, v in hparams.items() if v is not None}
        return inner(params, opt_state, batch, key, stop, hparams)

    step.__doc__ = make_train_step.__doc__
    return step
