"""The optimizer and the learning-rate schedule a run's flags ask for.

`train` and `sweep` share these: the optimizer a run uses (the flag, or the checkpoint's on
resume), the rates at a step, and what run_meta.json records of them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import TrainConfig
from ..core import optim, schedules
from ..core.muon import NS_STEPS, muon, ns_dtype_for
from ..errors import UserError
from ..formats import checkpoint
from ..options import TrainingOptions


def optimizer_choice(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> str:
    """The optimizer's name: --optimizer; on resume the checkpoint's, unless the flag was set
    to another one, which is an error: the saved state would not fit it."""
    if ckpt is None:
        return cfg.optimizer
    saved = checkpoint.optimizer_name(ckpt["opt_state"])
    if cfg.optimizer not in (saved, TrainConfig.optimizer):
        raise UserError(
            f"--resume {cfg.resume} was trained with --optimizer {saved}, not "
            f"{cfg.optimizer}: drop --optimizer, or start afresh with --init-from {cfg.resume}"
        )
    return saved


def make_optimizer(
    name: str, cfg: TrainingOptions, amp_dtype: torch.dtype | None = None,
    loss_scaled: bool = False,
) -> optim.GradientTransformation:  # fmt: skip
    """The run's optimizer as a chain: clip at --grad-clip, then AdamW or Muon with their
    rates, momentum and decay injected (set each step by `hparams_at`), inside fp16 loss
    scaling when `loss_scaled`. Muon's Newton-Schulz precision follows --muon-ns-dtype and
    the step's autocast dtype, once it is known (after --amp auto has measured)."""
    if name == "adamw":
        inner = optim.inject_hyperparams(optim.adamw)(lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        inner = optim.inject_hyperparams(muon)(
            lr=cfg.lr, muon_lr=cfg.muon_lr, momentum=cfg.muon_momentum,
            weight_decay=cfg.weight_decay, ns_dtype=ns_dtype_for(cfg.muon_ns_dtype, amp_dtype),
        )  # fmt: skip
    tx = optim.chain(optim.clip_by_global_norm(cfg.grad_clip), inner)
    return optim.dynamic_loss_scale(tx) if loss_scaled else tx


def lr_at(cfg: TrainConfig, it: int, end: int) -> float:
    """The --lr schedule at step `it` of a run that ends at step `end`."""
    name = cfg.schedule
    if name == "constant":
        return schedules.constant(it, lr=cfg.lr)
    if name == "cosine":
        return schedules.cosine_with_warmup(
            it, lr=cfg.lr, warmup_iters=cfg.warmup_iters, max_iters=end, min_lr=cfg.min_lr
        )
    return schedules.wsd(it, lr=cfg.lr, warmup_iters=cfg.warmup_iters, max_iters=end,
                     min_lr=cfg.min_lr, decay_fraction=cfg.decay_fraction)  # fmt: skip


def hparams_at(cfg: TrainingOptions, name: str, it: int, end: int) -> dict[str, float]:
    """The optimizer's injected settings at step `it`: the --lr schedule, the decay and, for
    Muon, its momentum and its rate, which follows --lr's schedule in proportion (warmup,
    decay, and --min-lr / --lr at the end)."""
    lr = lr_at(cfg, it, end)
    out = {"lr": lr, "weight_decay": cfg.weight_decay}
    if name == "muon":
        out |= {"muon_lr": cfg.muon_lr * lr / cfg.lr, "momentum": cfg.muon_momentum}
    return out


def optimizer_meta(cfg: TrainConfig, name: str, amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """What run_meta.json says of the optimizer and its schedule."""
    meta: dict[str, Any] = {"name": name, "lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if name == "muon":
        ns_dtype = str(ns_dtype_for(cfg.muon_ns_dtype, amp_dtype)).removeprefix("torch.")
        meta |= {"muon_lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "nesterov": True,
                 "ns_steps": NS_STEPS, "ns_dtype": ns_dtype,
                 "lr_scaling": "sqrt(max(1, rows/cols))"}  # fmt: skip
    return meta | {"schedule": cfg.schedule, "warmup_iters": cfg.warmup_iters,
                   "min_lr": cfg.min_lr, "decay_fraction": cfg.decay_fraction}  # fmt: skip
