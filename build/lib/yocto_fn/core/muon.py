"""Muon as gradient transformations: Newton-Schulz for the block matrices, AdamW for the rest.

Muon keeps one momentum buffer per weight matrix and moves the weight along that momentum
*orthogonalised*: the update keeps the momentum's singular vectors and sets its singular
values near one, found by a few Newton–Schulz iterations (matrix products only, so it runs
as batched matmuls). The update's scale no longer depends on how large the gradients happen
to be, which is where its speed in time-to-loss comes from.

Routing is `optim.partition` by a label per named leaf (`label`): the 2-D weights inside
`blocks` (`qkv_w`, `proj_w`, `fc_w`) take Muon; the embeddings, the head (tied or not),
norms and biases take AdamW with its own rate. A fused `qkv_w` [3C, C] is orthogonalised
as its three [C, C] matrices, since q, k and v are separate maps that only share storage.

Learning-rate scaling by shape: a [rows, cols] matrix (rows = outputs) moves by
`muon_lr * sqrt(max(1, rows / cols))`. An orthogonalised update has unit singular values;
for a tall matrix the scaling keeps the per-entry size of the change, and so the change in
every output, the same as for a square one (the "original" scaling of torch.optim.Muon).

`muon(...)` is that partition: `scale_by_muon` (momentum, batched Newton-Schulz and the
shape scale), then the decay and the rate, for the matrices; `optim.adamw` for the rest.
The rates, momentum and decay may be tensors (`optim.inject_hyperparams`), so a compiled
step never recompiles as a schedule moves them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import optim
from .optim import GradientTransformation, Scalar, Updates
from .params import Params, named_leaves, tree_leaves, tree_map, tree_unflatten_like

Tensor = torch.Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic, steepest at zero (modded-nanogpt)
NS_STEPS = 5
MUON_NAMES = ("qkv_w", "proj_w", "fc_w")
FUSED = {"qkv_w": 3}  # matrices stored side by side along the rows


class MuonState(NamedTuple):
    momentum: Params  # a buffer per leaf


def label(name: str, leaf: Tensor) -> str:
    """ "muon" for a 2-D weight matrix inside a block, "adamw" for every other leaf."""
    in_block = name.startswith("blocks.") and name.rsplit(".", 1)[-1] in MUON_NAMES
    return "muon" if leaf.dim() == 2 and in_block else "adamw"


def matrix_shape(name: str, shape: torch.Size) -> tuple[int, int]:
    """(rows, cols) of each matrix a leaf holds: a fused leaf is several along its rows."""
    return shape[-2] // FUSED.get(name.rsplit(".", 1)[-1], 1), shape[-1]


def lr_scale(rows: int, cols: int) -> float:
    """Shape scaling of the Muon rate for a [rows, cols] matrix (see the module docstring)."""
    return math.sqrt(max(1.0, rows / cols))


def ns_dtype_for(flag: str, amp_dtype: torch.dtype | None) -> torch.dtype:
    """--muon-ns-dtype as a dtype; auto follows the step's autocast (bf16 Newton-Schulz
    where the forward runs in bf16, where bf16 matmuls are native and measured faster).
    fp32 is the default: under a bf16 autocast, bf16 Newton-Schulz saved a few percent of
    the step but ended a little higher in every seed (docs/benchmarks.md, optimizers)."""
    if flag == "auto":
        return torch.bfloat16 if amp_dtype is torch.bfloat16 else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[flag]


def newton_schulz(
    x: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7, dtype: torch.dtype = torch.float32,
) -> Tensor:  # fmt: skip
    """Approximately orthogonalise each matrix of `x` [..., rows, cols] (same shape back,
    in `dtype`).

    Each matrix is first divided by its Frobenius norm, which bounds its spectral norm by one.
    Then X <- aX + (bA + cA^2)X with A = XX^T, on the wide orientation so that A is the
    smaller Gram matrix. The quintic's coefficients push singular values towards about
    0.7-1.2 rather than to exactly one; that costs nothing in training and saves steps.
    """
    a, b, c = coefficients
    tall = x.shape[-2] > x.shape[-1]
    y = x.to(dtype)
    if tall:
        y = y.mT
    y = y / torch.linalg.matrix_norm(y.float(), keepdim=True).clamp(min=eps).to(dtype)
    for _ in range(steps):
        gram = y @ y.mT
        y = a * y + (b * gram + c * (gram @ gram)) @ y
    return y.mT if tall else y


def orthogonalise(
    directions: dict[str, Tensor], steps: int, coefficients: tuple[float, float, float],
    eps: float, dtype: torch.dtype,
) -> dict[str, Tensor]:  # fmt: skip
    """Newton-Schulz on every matrix, one batched call per shape up to transposition: a
    tall matrix goes in transposed (Newton-Schulz works on the wide orientation anyway), so
    an MLP's [4C, C] and [C, 4C] share one call."""
    groups: dict[tuple[int, int], list[str]] = {}
    views: dict[str, Tensor] = {}
    for n, d in directions.items():
        rows, cols = matrix_shape(n, d.shape)
        v = d.reshape(-1, rows, cols)  # [k, rows, cols]: a fused leaf's k matrices
        views[n] = v.mT if rows > cols else v
        groups.setdefault(tuple(views[n].shape[-2:]), []).append(n)
    out: dict[str, Tensor] = {}
    for group in groups.values():
        stacked = torch.cat([views[n] for n in group]) if len(group) > 1 else views[group[0]]
        done = newton_schulz(stacked, steps, coefficients, eps, dtype)
        for n, part in zip(group, done.split([views[n].shape[0] for n in group]), strict=True):
            rows, cols = matrix_shape(n, directions[n].shape)
            out[n] = (part.mT if rows > cols else part).reshape(directions[n].shape)
    return out


def scale_by_muon(
    momentum: Scalar = 0.95, nesterov: bool = True, ns_steps: int = NS_STEPS,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7,
    ns_dtype: torch.dtype = torch.float32,
) -> GradientTransformation:  # fmt: skip
    """Momentum, then each matrix orthogonalised and scaled by `lr_scale` of its shape.

    The leaves must be matrices (route them here with `optim.partition` and `label`); a
    leaf named `qkv_w` is orthogonalised as its three stacked matrices."""

    def init(params: Params) -> MuonState:
        return MuonState(tree_map(torch.zeros_like, params))

    def update(updates: Updates, state: MuonState, params: Params | None = None):
        names, grads = list(named_leaves(updates)), tree_leaves(updates)
        moved = [torch.lerp(m, g, 1.0 - momentum)
                 for m, g in zip(tree_leaves(state.momentum), grads, strict=True)]  # fmt: skip
        directions = {
            n: torch.lerp(g, m, momentum) if nesterov else m
            for n, g, m in zip(names, grads, moved, strict=True)
        }
        ortho = orthogonalise(directions, ns_steps, ns_coefficients, eps, ns_dtype)
        out = [lr_scale(*matrix_shape(n, g.shape)) * ortho[n].to(g.dtype)
               for n, g in zip(names, grads, strict=True)]  # fmt: skip
        return tree_unflatten_like(updates, out), MuonState(
            tree_unflatten_like(state.momentum, moved)
        )

    return GradientTransformation(init, update)


def muon(
    lr: Scalar = 1e-3, muon_lr: Scalar = 0.05, momentum: Scalar = 0.95,
    weight_decay: Scalar = 0.1, *, nesterov: bool = True, ns_steps: int = NS_STEPS,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7,
    ns_dtype: torch.dtype = torch.float32, b1: float = 0.9, b2: float = 0.999,
    adam_eps: float = 1e-8, fused: bool | None = None,
) -> GradientTransformation:  # fmt: skip
    """Muon at `muon_lr` on the block matrices, AdamW at `lr` on the other leaves; the
    decoupled `weight_decay` applies to each decayed leaf at its own optimizer's rate (the
    matrices, and AdamW's leaves that `optim.decay_mask` admits)."""
    return optim.partition(
        {
            "muon": optim.chain(
                scale_by_muon(momentum, nesterov, ns_steps, ns_coefficients, eps, ns_dtype),
                optim.add_decayed_weights(weight_decay),
                optim.scale_by_learning_rate(muon_lr),
            ),
            "adamw": optim.adamw(lr, b1, b2, adam_eps, weight_decay, fused=fused),
        },
        label,
    )
