"""Transforms over whole models: ensembles trained in one step, per-example gradients.

An ensemble is a params tree whose every leaf has a leading member axis E (`stack` of E
trees). The model's one forward accepts such a tree (see `layers`): activations carry the
member axis, matmuls become batched matmuls, and the loss is the sum of the members' mean
losses. Members share no parameter, so one plain backward pass of that sum yields every
member's own gradient. `make_ensemble_step` trains all E members in one call this way;
clipping and AdamW then run as `_foreach_*` kernels directly on the stacked leaves, each
member scaled by its own norm, learning rate and weight decay. Learning rates and weight
decays are [E] tensors, so a sweep over them never recompiles.

`torch.func.vmap(grad(loss_fn))` over the member axis computes the same gradients (the tests
check both), but on CPU its batching rules cost more than they save (decomposed norms and
activations, a per-member fallback for SDPA): the member-axis forward is what makes one
ensemble step cheaper than E separate steps.

`per_example_grads` gives a gradient per training sequence, for per-example clipping (as in
DP-SGD) or for finding the sequences that pull hardest on the weights: the rows of a batch
become one-row members that share the params, so the same member-axis forward serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from .. import jit
from ..config import ModelConfig
from ..device import floats_on
from . import optim, rng
from .models import Model
from .params import Params, stack, to, tree_leaves, tree_map, unstack
from .train import Batch, Metrics, accumulate_grads, grad_and_value, loss_fn

__all__ = [
    "ensemble_init",
    "make_ensemble_step",
    "opt_init",
    "per_example_grad_norms",
    "per_example_grads",
    "stack",
    "unstack",
]

EnsembleStep = Callable[..., tuple[Params, optim.OptState, Metrics]]


def ensemble_init(
    model: Model, cfg: ModelConfig, seeds: Sequence[int], device: torch.device | str | None = None
) -> Params:
    """E = len(seeds) members stacked on a leading axis; member i is `model.init(cfg, seeds[i])`."""
    return to(stack([model.init(cfg, seed) for seed in seeds]), device)


def opt_init(params: Params, hp: optim.Optimizer = optim.AdamW()) -> Any:
    """Zeroed `hp` state for a stacked ensemble: every leaf [E, ...], the step counter [E]."""
    members = tree_leaves(params)[0].shape[0]
    return stack([hp.init(p) for p in unstack(params, members)])


def _member_tensor(value: float | torch.Tensor, members: int, device: torch.device):
    """A per-member hyper-parameter as a float32 [E] tensor (a scalar is broadcast)."""
    return floats_on(value, device).expand(members).clone()


def make_ensemble_step(
    model: Model,
    cfg: ModelConfig,
    hp: optim.Optimizer = optim.AdamW(),
    *,
    label_smoothing: float = 0.0,
    grad_clip: float = 1.0,
    amp_dtype: torch.dtype | None = None,
    compile: bool = False,
) -> EnsembleStep:
    """Build `step(params, opt_state, batch, lr, key, weight_decay=None, **hparams) ->
    (params, opt_state, metrics)` for a stacked ensemble of E members.

    params / opt_state: stacked trees (`ensemble_init`, `opt_init`). batch: (x, y) of
    [E, B, T], or [E, A, B, T] to accumulate A micro-batches. lr, weight_decay and the
    optimizer's other `member_hparams` (Muon: `muon_lr`, `momentum`): a float or an [E]
    tensor (None: `hp`'s own value). key: [E] dropout keys or None.
    metrics = {"loss", "grad_norm"}, each [E]. Member i's result equals
    `make_train_step(model, cfg, hp)` on member i with lr[i], key[i] and its own batch rows,
    clipped by its own gradient norm.
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

    def pure_step(params, opt_state, batch, lr, key, hparams):
        if batch[0].dim() == 3:
            grads, value = grads_of(params, batch, key)
        else:
            grads, value = accumulate_grads(partial(grads_of, params), batch, key, axis=1)
        grads, norm = optim.clip_by_global_norm(grads, grad_clip, members=True)
        params, opt_state = hp.update(grads, opt_state, params, lr, **hparams)
        return params, opt_state, {"loss": value, "grad_norm": norm}

    inner = jit.compile(pure_step) if compile else pure_step

    def step(params, opt_state, batch, lr, key, weight_decay=None, **hparams):
        unknown = set(hparams) - set(hp.member_hparams)
        if unknown:
            raise TypeError(f"{type(hp).__name__} takes no per-member {sorted(unknown)}")
        step_count = opt_state.step
        members, device = step_count.shape[0], step_count.device
        hparams["weight_decay"] = weight_decay
        per_member = {
            k: _member_tensor(getattr(hp, k) if hparams.get(k) is None else hparams[k],
                              members, device)
            for k in hp.member_hparams
        }  # fmt: skip
        lr = _member_tensor(lr, members, device)
        return inner(params, opt_state, batch, lr, key, per_member)

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
    """
    losses = partial(
        loss_fn, model=model, cfg=cfg, label_smoothing=label_smoothing, amp_dtype=amp_dtype,
        members=True,
    )  # fmt: skip
    row_grads = grad_and_value(
        lambda rows, batch, keys: losses(rows, batch, keys, train=keys is not None).sum()
    )

    def fn(params: Params, batch: Batch, key: torch.Tensor | None = None) -> Params:
        x, y = batch
        n = x.shape[0]
        rows = tree_map(lambda t: t.expand(n, *t.shape), params)
        keys = None if key is None else rng.split(key, n)
        grads, _ = row_grads(rows, (x[:, None], y[:, None]), keys)
        return grads

    return fn


def per_example_grad_norms(model: Model, cfg: ModelConfig, **kwargs) -> Callable[..., torch.Tensor]:
    """`fn(params, batch, key=None) -> [B]`: the global L2 norm of each row's gradient."""
    grads = per_example_grads(model, cfg, **kwargs)
    return lambda params, batch, key=None: optim.global_norm(grads(params, batch, key), True)
