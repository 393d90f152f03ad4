"""Functional Muon for the block matrices, AdamW for everything else.

Muon keeps one momentum buffer per weight matrix and moves the weight along that momentum
*orthogonalised*: the update keeps the momentum's singular vectors and sets its singular
values near one, found by a few Newton–Schulz iterations (matrix products only, so it runs
as batched matmuls). The update's scale no longer depends on how large the gradients happen
to be, which is where its speed in time-to-loss comes from.

Routing is a label per named leaf (`label`): the 2-D weights inside `blocks` (`qkv_w`,
`proj_w`, `fc_w`) take Muon; the embeddings, the head (tied or not), norms and biases take
AdamW with its own rate. A fused `qkv_w` [3C, C] is orthogonalised as its three [C, C]
matrices, since q, k and v are separate maps that only share storage.

Learning-rate scaling by shape: a [rows, cols] matrix (rows = outputs) moves by
`muon_lr * sqrt(max(1, rows / cols))`. An orthogonalised update has unit singular values;
for a tall matrix the scaling keeps the per-entry size of the change, and so the change in
every output, the same as for a square one (the "original" scaling of torch.optim.Muon).

State is data: `MuonState(step, momentum, adam)`, with `momentum` a flat dict over the Muon
leaves' dotted names and `adam` an `optim.OptState` over the other leaves. The Muon rate,
momentum and weight decay may be tensors ([E] for a stacked ensemble), so a compiled step
never recompiles as a schedule moves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import optim
from .optim import AdamW, OptState, Scalar
from .params import Params, named_leaves, tree_leaves, tree_map, tree_unflatten_like

Tensor = torch.Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic, steepest at zero (modded-nanogpt)
MUON_NAMES = ("qkv_w", "proj_w", "fc_w")
FUSED = {"qkv_w": 3}  # matrices stored side by side along the rows


class MuonState(NamedTuple):
    step: Tensor  # 0-d (or [E]) float32, number of updates applied
    momentum: Params  # {dotted name: buffer} for the Muon leaves
    adam: OptState  # AdamW state over {dotted name: leaf} for the others


def label(name: str, leaf: Tensor, members: bool = False) -> str:
    """ "muon" for a 2-D weight matrix inside a block, "adamw" for every other leaf.

    members=True: the leaf carries a leading ensemble axis, which is not a matrix dimension.
    """
    is_matrix = leaf.dim() - int(members) == 2
    in_block = name.startswith("blocks.") and name.rsplit(".", 1)[-1] in MUON_NAMES
    return "muon" if is_matrix and in_block else "adamw"


def split(params: Params, members: bool = False) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(Muon leaves, AdamW leaves) as flat dicts by dotted name, in `tree_leaves` order."""
    flat = named_leaves(params)
    muon = {n: p for n, p in flat.items() if label(n, p, members) == "muon"}
    return muon, {n: p for n, p in flat.items() if n not in muon}


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
    the step but ended a little higher in every seed (see the README's optimizer sweeps)."""
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


def _per_member(value: Scalar, like: Tensor, members: bool) -> Scalar:
    """A scalar, or an [E] tensor viewed to broadcast over [E, ...] leaves."""
    if members and isinstance(value, Tensor) and value.dim():
        return value.view(value.shape + (1,) * (like.dim() - 1))
    return value


@dataclass(frozen=True)
class Muon:
    """Muon on the block matrices, AdamW (`adamw`'s moments) on the rest.

    `muon_lr` is Muon's rate; AdamW's is the step's own `lr` argument. `weight_decay` is
    decoupled and applies to every decayed leaf at its own optimizer's rate: Muon's
    matrices and AdamW's 2-D leaves other than the embeddings (`optim.decay_mask`).
    """

    muon_lr: float = 0.05
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS
    eps: float = 1e-7
    weight_decay: float = 0.1
    ns_dtype: torch.dtype = torch.float32
    adamw: AdamW = field(default_factory=AdamW)

    member_hparams = ("weight_decay", "muon_lr", "momentum")

    def init(self, params: Params) -> MuonState:
        """Zeroed momentum for the Muon leaves and a zeroed AdamW state for the others."""
        muon, rest = split(params)
        device = tree_leaves(params)[0].device
        return MuonState(
            step=torch.zeros((), dtype=torch.float32, device=device),
            momentum=tree_map(torch.zeros_like, muon),
            adam=optim.zeros(rest, device),
        )

    def update(
        self, grads: Params, state: MuonState, params: Params, lr: Scalar, *,
        weight_decay: Scalar | None = None, muon_lr: Scalar | None = None,
        momentum: Scalar | None = None,
    ) -> tuple[Params, MuonState]:  # fmt: skip
        """One step; returns new params and state, leaving the inputs untouched.

        `lr` is AdamW's rate for the non-matrix leaves; `muon_lr`, `momentum` and
        `weight_decay` override the dataclass's values (floats, 0-d or [E] tensors).
        """
        members = state.step.dim() > 0
        wd = self.weight_decay if weight_decay is None else weight_decay
        mlr = self.muon_lr if muon_lr is None else muon_lr
        beta = self.momentum if momentum is None else momentum
        flat_p, flat_g = named_leaves(params), named_leaves(grads)
        names = list(state.momentum)
        rest = {n: p for n, p in flat_p.items() if n not in state.momentum}
        new_rest, adam = rest, state.adam._replace(step=state.adam.step + 1)
        if rest:
            new_rest, adam = self.adamw.update(
                {n: flat_g[n] for n in rest}, state.adam, rest, lr, weight_decay=wd
            )
        new_m, directions = {}, {}
        for n in names:
            g, b = flat_g[n], _per_member(beta, flat_g[n], members)
            m = torch.lerp(state.momentum[n], g, 1.0 - b)
            new_m[n] = m
            directions[n] = torch.lerp(g, m, b) if self.nesterov else m
        ortho = self._orthogonalise(directions)
        new_p = dict(new_rest)
        for n in names:
            p = flat_p[n]
            rows, cols = matrix_shape(n, p.shape)
            rate = _per_member(mlr, p, members)
            shrink = 1.0 - rate * _per_member(wd, p, members)
            new_p[n] = p * shrink - (rate * lr_scale(rows, cols)) * ortho[n].to(p.dtype)
        leaves = [new_p[n] for n in flat_p]
        return tree_unflatten_like(params, leaves), MuonState(state.step + 1, new_m, adam)

    def _orthogonalise(self, directions: dict[str, Tensor]) -> dict[str, Tensor]:
        """Newton–Schulz on every matrix, one batched call per shape up to transposition:
        a tall matrix goes in transposed (Newton–Schulz works on the wide orientation
        anyway), so an MLP's [4C, C] and [C, 4C] share one call."""
        groups: dict[tuple[int, int], list[str]] = {}
        views: dict[str, Tensor] = {}
        for n, d in directions.items():
            rows, cols = matrix_shape(n, d.shape)
            v = d.reshape(-1, rows, cols)  # [E * k or k, rows, cols]
            views[n] = v.mT if rows > cols else v
            groups.setdefault(tuple(views[n].shape[-2:]), []).append(n)
        out: dict[str, Tensor] = {}
        for group in groups.values():
            stacked = torch.cat([views[n] for n in group]) if len(group) > 1 else views[group[0]]
            done = newton_schulz(
                stacked, self.ns_steps, self.ns_coefficients, self.eps, self.ns_dtype
            )
            for n, part in zip(group, done.split([views[n].shape[0] for n in group]), strict=True):
                rows, cols = matrix_shape(n, directions[n].shape)
                out[n] = (part.mT if rows > cols else part).reshape(directions[n].shape)
        return out
