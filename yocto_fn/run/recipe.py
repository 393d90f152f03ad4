"""The optimizer and the learning-rate schedule a run's flags ask for.

`train` and `sweep` share these: the checks of the optimizer and schedule flags, the
optimizer a run uses (the flag, the checkpoint's on resume, or the default), the rates at a
step, and what run_meta.json records of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE, TrainConfig, TrainingOptions
from ..core import optim
from ..core.muon import Muon, ns_dtype_for
from ..errors import UserError
from ..formats import checkpoint


def check_schedule(cfg: TrainingOptions) -> None:
    """Flags of the optimizer and the schedule that `train` and `sweep` share."""
    if not 0.0 <= cfg.muon_momentum < 1.0:
        raise UserError(f"--muon-momentum must be in [0, 1) (got {cfg.muon_momentum})")
    if cfg.cosine_lr and cfg.schedule not in (None, "cosine"):
        raise UserError(f"--cosine-lr means --schedule cosine, not {cfg.schedule}: drop one")
    if not 0.0 < cfg.decay_fraction <= 1.0:
        raise UserError(f"--decay-fraction must be in (0, 1] (got {cfg.decay_fraction})")
    if cfg.warmup_iters < 0:
        raise UserError(f"--warmup-iters must be >= 0 (got {cfg.warmup_iters})")


def schedule_of(cfg: TrainingOptions) -> str:
    """--schedule, else cosine for --cosine-lr (the older spelling), else the default."""
    return cfg.schedule or ("cosine" if cfg.cosine_lr else DEFAULT_SCHEDULE)


def optimizer_setup(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> optim.Optimizer:
    """The optimizer: --optimizer, else (on resume) the checkpoint's, else the default.

    On resume another optimizer than the checkpoint's is an error: its state would not fit.
    """
    saved = None if ckpt is None else checkpoint.optimizer_name(ckpt["opt_state"])
    if saved and cfg.optimizer and cfg.optimizer != saved:
        raise UserError(
            f"--resume {cfg.resume} was trained with --optimizer {saved}, not "
            f"{cfg.optimizer}: drop --optimizer, or start afresh with --init-from {cfg.resume}"
        )
    name = cfg.optimizer or saved or DEFAULT_OPTIMIZER
    if name == "adamw":
        return optim.AdamW(weight_decay=cfg.weight_decay)
    return Muon(muon_lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay)


def for_step(
    hp: optim.Optimizer, cfg: TrainingOptions, amp_dtype: torch.dtype | None
) -> optim.Optimizer:
    """The optimizer's settings that depend on the step's autocast dtype, once it is known
    (after --amp auto has measured): Muon's Newton-Schulz precision (--muon-ns-dtype)."""
    if not isinstance(hp, Muon):
        return hp
    return dataclasses.replace(hp, ns_dtype=ns_dtype_for(cfg.muon_ns_dtype, amp_dtype))


def optimizer_name(hp: optim.Optimizer) -> str:
    return "muon" if isinstance(hp, Muon) else "adamw"


def lr_at(cfg: TrainConfig, it: int, end: int) -> float:
    """The --lr schedule at step `it` of a run that ends at step `end`."""
    name = schedule_of(cfg)
    if name == "constant":
        return optim.constant(it, lr=cfg.lr)
    if name == "cosine":
        return optim.cosine_with_warmup(
            it, lr=cfg.lr, warmup_iters=cfg.warmup_iters, max_iters=end, min_lr=cfg.min_lr
        )
    return optim.wsd(it, lr=cfg.lr, warmup_iters=cfg.warmup_iters, max_iters=end,
                     min_lr=cfg.min_lr, decay_fraction=cfg.decay_fraction)  # fmt: skip


def hparams_at(cfg: TrainConfig, hp: optim.Optimizer, it: int, end: int) -> dict[str, float]:
    """The step's scheduled settings beyond lr: Muon's rate follows --lr's schedule in
    proportion (warmup, decay, and --min-lr / --lr at the end)."""
    if not isinstance(hp, Muon):
        return {}
    return {"muon_lr": cfg.muon_lr * lr_at(cfg, it, end) / cfg.lr}


def optimizer_meta(cfg: TrainConfig, hp: optim.Optimizer) -> dict[str, Any]:
    """What run_meta.json says of the optimizer and its schedule."""
    meta: dict[str, Any] = {"name": optimizer_name(hp), "lr": cfg.lr,
                            "weight_decay": cfg.weight_decay}  # fmt: skip
    if isinstance(hp, Muon):
        meta |= {"muon_lr": cfg.muon_lr, "momentum": hp.momentum, "nesterov": hp.nesterov,
                 "ns_steps": hp.ns_steps, "ns_dtype": str(hp.ns_dtype).removeprefix("torch."),
                 "lr_scaling": "sqrt(max(1, rows/cols))"}  # fmt: skip
    return meta | {"schedule": schedule_of(cfg), "warmup_iters": cfg.warmup_iters,
                   "min_lr": cfg.min_lr, "decay_fraction": cfg.decay_fraction}  # fmt: skip
