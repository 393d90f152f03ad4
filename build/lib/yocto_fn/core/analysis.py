"""The loss surface, measured with transforms of the one loss function.

Every function here takes `loss(params, batch) -> scalar` (`make_loss` builds it for any
variant, without dropout, so that the surface is a fixed function of the params) and a
params tree. `batch` is one `(x, y)` pair or a list of them; with a list the loss is the
mean over the batches, and each Hessian-vector product is the mean of the per-batch
products, so memory stays that of one batch however many are measured.

- `hvp`: a Hessian-vector product as forward-mode over reverse-mode (`torch.func.jvp` of
  `torch.func.grad`): one extra forward-mode pass through the backward graph, about the
  cost of two gradients, and no Hessian is ever formed.
- `top_eigenvalues`: the largest Hessian eigenvalues (the sharpness) by Lanczos iteration.
- `hessian_trace`: Hutchinson's estimate E[z^T H z] over Rademacher vectors z.
- `gradient_noise_scale`: the simple noise scale tr(Sigma) / |G|^2 of McCandlish et al.
  (2018) from per-example gradients; it estimates the batch size above which more rows per
  step stop buying proportionally fewer steps.
- `loss_landscape`: the loss on a 2-D slice through the params along two random
  filter-normalised directions (Li et al. 2018), so that slices of differently scaled
  models compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import ModelConfig
from .models import Model
from .params import Params, tree_leaves, tree_map, tree_unflatten_like
from .train import loss_fn

Loss = Callable[[Params, Any], torch.Tensor]
PerExampleGrads = Callable[[Params, Any], Params]
Progress = Callable[[int], None]


class Eigenvalues(NamedTuple):
    values: list[float]  # the k largest Ritz values, largest first
    residuals: list[float]  # |beta_m s_m|: each value's Lanczos error bound
    smallest: float  # the smallest Ritz value (negative where the surface is not convex)
    iters: int  # Lanczos steps taken (fewer than asked if the Krylov space closed early)


class Trace(NamedTuple):
    estimate: float
    stderr: float  # the sample standard deviation of z^T H z over sqrt(samples)
    samples: int


class NoiseScale(NamedTuple):
    simple: float  # B_simple = trace_cov / grad_sq, in rows (sequences) per batch
    trace_cov: float  # tr(Sigma): the summed variance of one row's gradient
    grad_sq: float  # |G|^2: the squared norm of the true (expected) gradient
    rows: int  # rows per batch
    batches: int
    trace_cov_stderr: float  # standard errors over the batches (nan with one batch)
    grad_sq_stderr: float


class Landscape(NamedTuple):
    alphas: list[float]  # steps along the first direction
    betas: list[float]  # steps along the second direction
    losses: list[list[float]]  # losses[i][j] at params + alphas[i] d1 + betas[j] d2
    center: float  # the loss at the params themselves


def make_loss(model: Model, cfg: ModelConfig, amp_dtype: torch.dtype | None = None) -> Loss:
    """`loss(params, batch)`: the mean next-token loss with dropout off (`train=False`)."""
    return partial(loss_fn, key=None, model=model, cfg=cfg, amp_dtype=amp_dtype, train=False)


def _batches(batch: Any) -> list[Any]:
    return batch if isinstance(batch, list) else [batch]


def mean_loss(loss: Loss, params: Params, batch: Any) -> torch.Tensor:
    """The loss over one batch, or the mean over a list of them."""
    batches = _batches(batch)
    return sum(loss(params, b) for b in batches) / len(batches)


def hvp(loss: Loss, params: Params, batch: Any, v: Params) -> Params:
    """H v, with H the Hessian of `loss` at `params`, as a tree shaped like `params`.

    Forward-over-reverse: the directional derivative along `v` of the gradient function.
    Attention runs through SDPA's math backend here, because the fused CPU and CUDA kernels
    have no forward-mode derivative; the math backend computes the same function.
    """
    products = []
    with sdpa_kernel(SDPBackend.MATH):
        for b in _batches(batch):
            gradient = torch.func.grad(loss)
            products.append(torch.func.jvp(lambda p: gradient(p, b), (params,), (v,))[1])  # noqa: B023
    if len(products) == 1:
        return products[0]
    leaves = [sum(ls) / len(ls) for ls in zip(*map(tree_leaves, products), strict=True)]
    return tree_unflatten_like(params, leaves)


def _flat(tree: Params) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tree_leaves(tree)])


def _unflat(vec: torch.Tensor, like: Params) -> Params:
    leaves, start = [], 0
    for t in tree_leaves(like):
        leaves.append(vec[start : start + t.numel()].view_as(t))
        start += t.numel()
    return tree_unflatten_like(like, leaves)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def top_eigenvalues(
    loss: Loss,
    params: Params,
    batch: Any,
    k: int = 1,
    iters: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> Eigenvalues:
    """The k largest eigenvalues of the Hessian by `iters` steps of Lanczos iteration.

    Lanczos builds an orthonormal basis of the Krylov space {q, Hq, H^2 q, ...} from one
    hvp per step; the eigenvalues of the small tridiagonal matrix it leaves (Ritz values)
    converge to the extreme eigenvalues first, faster than power iteration for the same
    number of products. The basis is re-orthogonalised in full at every step (it holds
    `iters` flat copies of the params), which keeps the Ritz values free of the spurious
    copies plain Lanczos produces in floating point. `progress(j)` follows each step.
    """
    if not 1 <= k <= iters:
        raise ValueError(f"need 1 <= k <= iters (k={k}, iters={iters})")
    start = _flat(params)
    n = start.numel()
    q = torch.randn(n, generator=_generator(seed), dtype=torch.float64).to(start)
    q /= q.norm()
    basis = torch.empty(min(iters, n), n, dtype=start.dtype, device=start.device)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(basis.shape[0]):
        basis[j] = q
        w = _flat(hvp(loss, params, batch, _unflat(q, params)))
        alphas.append(float(w @ q))
        if progress is not None:
            progress(j)
        for _ in range(2):  # twice is enough (Kahan's "twice is enough")
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if beta <= 1e-10 * max(1.0, abs(alphas[-1])) or j + 1 == basis.shape[0]:
            betas.append(beta)
            break
        betas.append(beta)
        q = w / beta
    m = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: m - 1], dtype=torch.float64)
    tri += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tri)
    order = torch.argsort(values, descending=True)[:k]
    residuals = (betas[m - 1] * vectors[m - 1, order]).abs()
    return Eigenvalues(values[order].tolist(), residuals.tolist(), float(values.min()), m)


def _rademacher(like: Params, gen: torch.Generator) -> Params:
    def draw(t: torch.Tensor) -> torch.Tensor:
        signs = torch.randint(0, 2, t.shape, generator=gen).to(t.device, t.dtype)
        return signs * 2 - 1

    return tree_map(draw, like)


def _vdot(a: Params, b: Params) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True))


def hessian_trace(
    loss: Loss,
    params: Params,
    batch: Any,
    samples: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> Trace:
    """Hutchinson's estimator: the mean of z^T H z over `samples` Rademacher vectors z.

    Unbiased, since E[z z^T] = I; one sample's variance is 2 (|H|_F^2 - sum_i H_ii^2), so
    the standard error falls as 1/sqrt(samples), and the one reported is measured from the
    samples themselves. `progress(i)` follows each sample.
    """
    if samples < 2:
        raise ValueError(f"need at least 2 samples for a standard error (got {samples})")
    gen = _generator(seed)
    draws = []
    for i in range(samples):
        z = _rademacher(params, gen)
        draws.append(float(_vdot(z, hvp(loss, params, batch, z))))
        if progress is not None:
            progress(i)
    values = torch.tensor(draws, dtype=torch.float64)
    return Trace(float(values.mean()), float(values.std() / math.sqrt(samples)), samples)


def gradient_noise_scale(per_example: PerExampleGrads, params: Params, batch: Any) -> NoiseScale:
    """B_simple = tr(Sigma) / |G|^2 from the gradients of the rows of each batch.

    `per_example(params, batch)` gives each row's gradient (leaves [B, ...]; e.g.
    `ensemble.per_example_grads`). From a batch of B rows with gradients g_i and mean g,
    the unbiased estimates are tr(Sigma) = (sum_i |g_i|^2 - B |g|^2) / (B - 1) and |G|^2 =
    |g|^2 - tr(Sigma) / B (|g|^2 alone overstates |G|^2 by the noise). Over several batches
    both are averaged before the ratio is taken, and their spread over the batches gives
    standard errors. Where the noise swamps the gradient the |G|^2 estimate is small
    against its error (or even negative): measure more batches.
    """
    traces, norms, rows = [], [], None
    for b in _batches(batch):
        grads = tree_leaves(per_example(params, b))
        n = grads[0].shape[0]
        if n < 2:
            raise ValueError(f"need at least 2 rows per batch for a variance (got {n})")
        if rows not in (None, n):
            raise ValueError(f"batches of {rows} and {n} rows: use one batch size")
        rows = n
        with torch.no_grad():
            sum_sq = sum(g.double().square().sum() for g in grads)
            mean_sq = sum(g.double().mean(0).square().sum() for g in grads)
        trace = (sum_sq - n * mean_sq) / (n - 1)
        traces.append(float(trace))
        norms.append(float(mean_sq - trace / n))
    trace_cov, trace_se = _mean_and_stderr(traces)
    grad_sq, grad_se = _mean_and_stderr(norms)
    simple = trace_cov / grad_sq if grad_sq != 0 else math.inf
    return NoiseScale(simple, trace_cov, grad_sq, rows, len(traces), trace_se, grad_se)


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    stderr = float(t.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(t.mean()), stderr


def filter_normalized_direction(params: Params, gen: torch.Generator) -> Params:
    """A Gaussian direction whose every filter (a row of a weight matrix: one output unit,
    or one token's embedding) has the norm of the same filter in `params`.

    Scaling by the weights' own filter norms removes the scale invariance that otherwise
    makes one model look sharper than another merely because its weights are larger. 1-D
    leaves (biases, norm gains) get no component, as in Li et al.
    """

    def direction(w: torch.Tensor) -> torch.Tensor:
        if w.dim() < 2:
            return torch.zeros_like(w)
        d = torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device)
        dims = tuple(range(1, w.dim()))
        scale = w.norm(dim=dims, keepdim=True) / d.norm(dim=dims, keepdim=True).clamp_min(1e-12)
        return d * scale

    return tree_map(direction, params)


def loss_landscape(
    loss: Loss,
    params: Params,
    batch: Any,
    steps: int = 21,
    span: float = 1.0,
    seed: int = 0,
    directions: Sequence[Params] | None = None,
    progress: Progress | None = None,
) -> Landscape:
    """The loss at params + a d1 + b d2 on a `steps` x `steps` grid of a, b in [-span, span].

    d1 and d2 are `filter_normalized_direction`s drawn from `seed` unless `directions`
    gives them. `progress(i)` is called after each row of the grid (a progress bar).
    """
    if steps < 2:
        raise ValueError(f"need at least 2 steps per axis (got {steps})")
    if directions is None:
        gen = _generator(seed)
        directions = [filter_normalized_direction(params, gen) for _ in range(2)]
    d1, d2 = directions
    grid = torch.linspace(-span, span, steps, dtype=torch.float64).tolist()
    losses = []
    with torch.no_grad():
        center = float(mean_loss(loss, params, batch))
        for i, a in enumerate(grid):
            row = []
            for b in grid:
                moved = tree_map(lambda p, x, y: p + a * x + b * y, params, d1, d2)  # noqa: B023
                row.append(float(mean_loss(loss, moved, batch)))
            losses.append(row)
            if progress is not None:
                progress(i)
    return Landscape(grid, grid, losses, center)
