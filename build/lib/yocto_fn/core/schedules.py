"""Learning-rate schedules: the rate at a step, as plain functions of the step number.

The host evaluates them once per step and hands the value to the train step as a tensor
(`optim.inject_hyperparams`), so a compiled step never recompiles as the rate moves.
"""

from __future__ import annotations

import math


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
