"""Transforms over whole models: ensembles trained in one step, per-example gradients.

An ensemble is a params tree whose every leaf has a leading member axis E (`stack` of E
trees). The model's one forward accepts such a tree (see `layers`): activations carry the
member axis, matmuls become batched matmuls, and the loss is the sum of the members' mean
losses. Members share no parameter, so one plain backward pass of that sum yields every
member's own gradient. `make_ensemble_step` trains all E members in one call this way; the
optimizer, any `optim.GradientTransformation`, then runs as `vmap(tx.update)` over the
member axis, so each member is clipped by its own norm and moves with its own injected
rates, decay and momentum ([E] tensors in the stacked state: a sweep over them never
recompiles). Its state is `vmap(tx.init)(stacked_params)`, or the member states stacked.

`torch.func.vmap(grad(loss_fn))` over the member axis computes the same gradients (the tests
check both), but on CPU its batching rules cost more than they save (decomposed norms and
activations, a per-member fallback for SDPA): the member-axis forward is what makes one
ensemble step cheaper than E separate steps. The optimizer's elementwise arithmetic has no
such cost, so there `vmap` keeps every link written for one model.

`per_example_grads` gives a gradient per training sequence, for per-example clipping (as in
DP-SGD) or for finding the sequences that pull hardest on the weights: the rows of a batch
become one-row members that share the params, so the same member-axis forward serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from ..device import floats_on
from . import optim, rng
from .config import ModelConfig
from .models import Model
from .params import Params, stack, to, tree_leaves, tree_map, unstack
from .train import Batch, Metrics, accumulate_grads, compiled, grad_and_value, loss_fn

__all__ = [
    "ensemble_init",
    "make_ensemble_step",
    "per_example_grad_norms",
    "per_example_grads",
    "stack",
    "unstack",
]

EnsembleStep = Callable[..., tuple[Params, Any, Metrics]]


def ensemble_init(
    model: Model, cfg: ModelConfig, seeds: Sequence[int], device: torch.device | str | None = None
) -> Params:
    """E = len(seeds) members stacked on a leading axis; member i is `model.init(cfg, seeds[i])`."""
    return to(stack([model.init(cfg, seed) for seed in seeds]), device)


def _member_tensor(value: float | torch.Tensor, members: int, device: torch.device):
    """A per-member hyper-parameter as a float32 [E] tensor (a scalar is broadcast)."""
    return floats_on(value, device).expand(members).contiguous()


def make_ensemble_step(
    model: Model,
    cfg: ModelConfig,
    tx: optim.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    compile: bool = False,
) -> EnsembleStep:
    """Build `step(params, opt_state, batch, key=None, **hparams) -> (params, opt_state,
    metrics)` for a stacked ensemble of E members.

    params: a stacked tree (`ensemble_init`); opt_state: `vmap(tx.init)(params)` or the
    members' states stacked. batch: (x, y) or (x, y, w) (per-token loss weights, see
    `loss_fn`), each [E, B, T], or [E, A, B, T] to accumulate A micro-batches. hparams: the
    injected hyper-parameters (`lr=`, `weight_decay=`, ...), each a float or an [E] tensor.
    key: [E] dropout keys or None. metrics = {"loss", "grad_norm"}, each [E]. Member i's
    result equals `make_train_step(model, cfg, tx)` on member i with hparams[i], key[i] and
    its own batch rows.
    """
    losses = partial(
        loss_fn, model=model, cfg=cfg, label_smoothing=label_smoothing, amp_dtype=amp_dtype,
        members=True,
    )  # fmt: skip

    def total(params, batch, key):
        """The sum of the member losses (its gradient is every member's own), and the losses."""
        member_losses = losses(params, batch, key)
        return member_losses.sum(), member_losses

    total_grads = grad_and_value(total, has_aux=True)

    def grads_of(params, batch, key):
        """Gradients laid out like the params: a batched matmul hands back its weight
        gradients transposed, which would send every optimizer op down a strided path."""
        grads, (_, member_losses) = total_grads(params, batch, key)
        return tree_map(torch.Tensor.contiguous, grads), member_losses

    member_update = torch.func.vmap(tx.update)
    member_norms = torch.func.vmap(optim.global_norm)

    def pure_step(params, opt_state, batch, key, hparams):
        if batch[0].dim() == 3:
            grads, value = grads_of(params, batch, key)
        else:
            grads, value = accumulate_grads(partial(grads_of, params), batch, key, axis=1)
        if hparams:
            opt_state = optim.set_hparams(opt_state, **hparams)
        updates, opt_state = member_update(grads, opt_state, params)
        params = optim.apply_updates(params, updates)
        return params, opt_state, {"loss": value, "grad_norm": member_norms(grads)}

    inner = compiled(pure_step) if compile else pure_step

    def step(params, opt_state, batch, key=None, **hparams):
        first = tree_leaves(params)[0]
        hparams = {k: _member_tensor(v, first.shape[0], first.device)
                   for k, v in hparams.items() if v is not None}  # fmt: skip
        return inner(params, opt_state, batch, key, hparams)

    step.__doc__ = make_ensemble_step.__doc__
    return step


def per_example_grads(
    model: Model,
    cfg: ModelConfig,
    *,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
) -> Callable[..., Params]:
    """`fn(params, batch, key=None) -> grads`, each leaf [B, ...]: row b's gradient of its
    own mean token loss. Their mean over B is the batch gradient.

    The rows become an ensemble of B one-row members that share `params` (broadcast along
    the member axis, no copy): one forward and one backward pass give every row's gradient,
    at about the cost of one batch gradient. The result is that of
    `vmap(grad(loss of one row))` (the tests compare them), which costs more on CPU.
    Without a key the forward runs without dropout; with one, row b draws its dropout from
    `split(key, B)[b]` (so the mean is then not the gradient of one batch-level mask).
    With weights, `batch = (x, y, w)`, row b's loss is its own weighted mean (a row whose
    mask is all 0 has a zero gradient), so the mean over B is the batch gradient only when
    every row holds the same total weight.
    """
    losses = partial(
        loss_fn, model=model, cfg=cfg, label_smoothing=label_smoothing, amp_dtype=amp_dtype,
        members=True,
    )  # fmt: skip
    row_grads = grad_and_value(
        lambda rows, batch, keys: losses(rows, batch, keys, train=keys is not None).sum()
    )

    def fn(params: Params, batch: Batch, key: torch.Tensor | None = None) -> Params:
        n = batch[0].shape[0]
        rows = tree_map(lambda t: t.expand(n, *t.shape), params)
        keys = None if key is None else rng.split(key, n)
        grads, _ = row_grads(rows, tuple(t[:, None] for t in batch), keys)
        return grads

    return fn


def per_example_grad_norms(model: Model, cfg: ModelConfig, **kwargs) -> Callable[..., torch.Tensor]:
    """`fn(params, batch, key=None) -> [B]`: the global L2 norm of each row's gradient."""
    grads = per_example_grads(model, cfg, **kwargs)
    norms = torch.func.vmap(optim.global_norm)
    return lambda params, batch, key=None: norms(grads(params, batch, key))
