"""The pure train step: loss, gradients by `torch.func`, clipping and the optimizer in one
function.

`make_train_step` returns `step(params, opt_state, batch, lr, key) -> (params, opt_state,
metrics)`. Because the whole step is one pure function of tensors it can be compiled whole
(forward, backward and optimizer fuse into one graph), `vmap`ped over an ensemble axis, or
wrapped by gradient averaging for data parallelism (with an optional `stop` flag that rides
the same all-reduce).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from .. import jit
from ..config import ModelConfig
from ..device import autocast, floats_on
from . import layers, optim, rng
from .models import Model
from .params import Params, tree_leaves, tree_map, tree_unflatten_like

Batch = tuple[torch.Tensor, torch.Tensor]
Metrics = dict[str, torch.Tensor]
TrainStep = Callable[..., tuple[Params, optim.OptState, Metrics]]


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
    costs about 5% of an eager CPU step. Values and gradients are the same either way;
    `eager_autograd=False` always uses torch.func (to measure that cost).
    """
    transformed = torch.func.grad_and_value(fn, has_aux=has_aux)
    if not eager_autograd:
        return transformed

    def eager(params: Params, *args, **kwargs) -> tuple[Params, torch.Tensor]:
        if torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None:
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

    members=True: an ensemble (params, x, y and key with a leading member axis E, see
    `layers`); returns each member's mean loss, [E].
    """
    x, y = batch
    with autocast(x.device.type, amp_dtype):
        logits, _ = model.forward(
            params, x, cfg, train=train, dropout_key=key,
            activation_checkpointing=activation_checkpointing,
        )  # fmt: skip
    return layers.cross_entropy(logits, y, label_smoothing, members)


def accumulate_grads(
    grads_of: Callable[[Batch, torch.Tensor | None], tuple[Params, torch.Tensor]],
    batch: Batch,
    key: torch.Tensor | None,
    axis: int = 0,
) -> tuple[Params, torch.Tensor]:
    """Mean gradients and loss over the micro-batches along `axis` of `batch = (x, y)`.

    Micro-batch i is drawn with key fold_in(key, i); the sum runs in place over the leaves
    (`_foreach_add_`), so only one extra gradient tree is alive at a time.
    """
    x, y = batch
    n = x.shape[axis]
    grads, total = None, 0.0
    for i in range(n):
        micro = (x.select(axis, i), y.select(axis, i))
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
    hp: optim.Optimizer = optim.AdamW(),
    *,
    label_smoothing: float = 0.0,
    grad_clip: float = 1.0,
    amp_dtype: torch.dtype | None = None,
    compile: bool = False,
    eager_autograd: bool = True,
    activation_checkpointing: bool = False,
    loss_scale: optim.DynamicLossScale | None = None,
    grad_sync: Callable[[Params, torch.Tensor], tuple[Params, torch.Tensor]] | None = None,
) -> TrainStep:
    """Build `step(params, opt_state, batch, lr, key) -> (params, opt_state, metrics)`.

    `hp` is the optimizer (`optim.AdamW`, `muon.Muon`); `step(..., **hparams)` passes its
    scheduled hyper-parameters (Muon's `muon_lr`, `momentum`) to `hp.update`. `lr`, those,
    and `key` (an `rng` key) may be floats or 0-d tensors; all are tensors before the
    compiled region, so changing them never triggers a recompile.
    metrics = {"loss", "grad_norm"} as 0-d tensors (no host sync inside the step).

    Gradient accumulation: give `batch` a leading micro-batch axis, (x, y) of [A, B, T]; the
    step averages the A micro-batch gradients (micro-batch i uses key fold_in(key, i)), which
    equals one batch of A*B rows. `eager_autograd` is passed to `grad_and_value`.

    Data parallelism: `grad_sync(grads, value) -> (grads, value)` runs once per step on the
    accumulated gradients, before clipping (e.g. `distributed.average`, one all-reduce).
    `step(..., stop=flag)` (a 0-d tensor, 1.0 where this rank was asked to stop) sends the
    flag through that same call, as `value = [loss, flag]`, and returns its mean over the
    ranks as metrics["stop"]: non-zero on every rank as soon as one rank asked, so the
    ranks agree on stopping after this step without a collective of its own.

    fp16: pass `loss_scale` here and `optim.init(params, loss_scale)` (a `ScaledState`) as
    the state. The loss
    is scaled before the backward pass and the gradients unscaled after it; a step with
    non-finite gradients leaves params and moments as they were and lowers the scale.
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
        loss = jit.compile(loss)
    grad_and_loss = grad_and_value(loss, eager_autograd)
    grad_and_scaled_loss = grad_and_value(lambda p, b, k, s: loss(p, b, k) * s, eager_autograd)

    def grads_of(params, batch, key, scale):
        if scale is None:
            return grad_and_loss(params, batch, key)
        grads, value = grad_and_scaled_loss(params, batch, key, scale)
        return optim.scale_tree(grads, 1.0 / scale), value / scale

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

    def with_stop(out, stop):
        params, opt_state, metrics = out
        return params, opt_state, metrics if stop is None else metrics | {"stop": stop}

    def apply(grads, value, params, opt_state, lr, hparams):
        """Clip and update (and with fp16, skip a step whose gradients overflowed)."""
        if loss_scale is None:
            grads, norm = optim.clip_by_global_norm(grads, grad_clip)
            params, opt_state = hp.update(grads, opt_state, params, lr, **hparams)
            return params, opt_state, {"loss": value.detach(), "grad_norm": norm}
        inner, scaler = opt_state
        grads, norm = optim.clip_by_global_norm(grads, grad_clip)
        new_params, new_inner = hp.update(grads, inner, params, lr, **hparams)
        finite = torch.isfinite(norm)
        new_state = optim.ScaledState(
            optim.keep_if(finite, new_inner, inner), loss_scale.adjust(scaler, finite)
        )
        return optim.keep_if(finite, new_params, params), new_state, {
            "loss": value.detach(), "grad_norm": norm,
        }  # fmt: skip

    def scale_of(opt_state):
        return None if loss_scale is None else opt_state.loss_scale.scale

    def pure_step(params, opt_state, batch, lr, key, stop, hparams):
        grads, value = accumulate(params, batch, key, scale_of(opt_state))
        grads, value, stop = synced(grads, value, stop)
        return with_stop(apply(grads, value, params, opt_state, lr, hparams), stop)

    if split:
        compiled_apply = jit.compile(apply)

        def inner(params, opt_state, batch, lr, key, stop, hparams):
            grads, value = accumulate(params, batch, key, scale_of(opt_state))
            grads, value, stop = synced(grads, value, stop)
            return with_stop(compiled_apply(grads, value, params, opt_state, lr, hparams), stop)

    else:
        inner = jit.compile(pure_step) if compile else pure_step

    def step(params, opt_state, batch, lr, key, stop=None, **hparams):
        device = tree_leaves(opt_state)[0].device
        hparams = {k: floats_on(v, device) for k, v in hparams.items() if v is not None}
        return inner(params, opt_state, batch, floats_on(lr, device), key, stop, hparams)

    step.__doc__ = make_train_step.__doc__
    return step
