"""The loss law `recommend` plans with, fitted to a grid of training runs.

    L(N, D, U, h) = h * (e + A / N**alpha + B / D_eff**beta)

N is the parameter count, D the tokens seen, U the unique tokens of the training split and
h how hard the corpus is: the held-out entropy of a trigram model (`corpus_hardness`). The
grid's two corpora differ in h by a factor 1.25 and in val loss by 1.28-1.33 at every shape
and length, so h scales the whole curve rather than shifting its floor. (lzma's compressed
size, tried first, ranked an unseen corpus of prose as far harder than it trains.) Seen
more than once, data is worth less each pass (after Muennighoff et al., "Scaling
Data-Constrained Language Models"):

    D_eff = U * (1 + r * (1 - exp(-R / r))),  R = D / U - 1 passes beyond the first

so D_eff <= U * (1 + r): repeating a small corpus stops paying. The coefficients live in
`law.json` beside this file and are refitted by `benchmarks/recommend_grid.py --fit`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import torch

from . import fileio

COEFFS = Path(__file__).with_name("law.json")
SAMPLE_TOKENS = 1 << 20


@dataclass(frozen=True)
class Law:
    e: float
    a: float
    alpha: float
    b: float
    beta: float
    r: float

    def effective_tokens(self, d: float, u: float) -> float:
        if d <= u:
            return d
        return u * (1 + self.r * (1 - math.exp(-(d / u - 1) / self.r)))

    def predict(self, n: float, d: float, u: float, h: float) -> float:
        """Expected validation loss (nats per token)."""
        d_eff = self.effective_tokens(d, u)
        return h * (self.e + self.a / n**self.alpha + self.b / d_eff**self.beta)


def corpus_hardness(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    """Nats per token of the validation split under a trigram model of (the first million
    tokens of) the training split, add-1/2 smoothed: a second's counting that measures
    both how predictable the text is from short contexts and how far val strays from
    train, which is what moves a small model's loss between corpora."""
    train = np.asarray(train[:SAMPLE_TOKENS], dtype=np.int64)
    val = np.asarray(val[:SAMPLE_TOKENS], dtype=np.int64)

    def grams(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        context = ids[:-2] * vocab + ids[1:-1]
        return context, context * vocab + ids[2:]

    train_ctx, train_tri = grams(train)
    val_ctx, val_tri = grams(val)

    def counts(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
        uniq, n = np.unique(table, return_counts=True)
        at = np.clip(np.searchsorted(uniq, keys), 0, len(uniq) - 1)
        return np.where(uniq[at] == keys, n[at], 0)

    p = (counts(val_tri, train_tri) + 0.5) / (counts(val_ctx, train_ctx) + 0.5 * vocab)
    return float(-np.log(p).mean())


# Exponents and the repetition constant are kept in ranges the literature and our runs
# support, so a small grid cannot fit a law that extrapolates wildly.
BOUNDS = {"alpha": (0.05, 1.5), "beta": (0.05, 1.5), "r": (0.5, 100.0)}
NAMES = ("e", "a", "alpha", "b", "beta", "r")


def _coefficients(raw: torch.Tensor) -> list[torch.Tensor]:
    """Unconstrained raw values -> positive coefficients, bounded where BOUNDS says."""
    out = []
    for name, x in zip(NAMES, raw, strict=True):
        if name in BOUNDS:
            lo, hi = (math.log(v) for v in BOUNDS[name])
            out.append(torch.exp(lo + (hi - lo) * torch.sigmoid(x)))
        else:
            out.append(torch.exp(x))
    return out


def _raw(value: float, name: str) -> float:
    if name not in BOUNDS:
        return math.log(value)
    lo, hi = (math.log(v) for v in BOUNDS[name])
    frac = (math.log(value) - lo) / (hi - lo)
    return math.log(frac / (1 - frac))


def _predict_t(raw: torch.Tensor, n, d, u, h) -> torch.Tensor:
    """`Law.predict` over tensors of runs."""
    e, a, alpha, b, beta, r = _coefficients(raw)
    repeats = torch.clamp(d / u - 1, min=0)
    d_eff = torch.where(d <= u, d, u * (1 + r * (1 - torch.exp(-repeats / r))))
    return h * (e + a / n**alpha + b / d_eff**beta)


def fit(rows: list[dict]) -> Law:
    """Least squares on log(loss), by L-BFGS from a small grid of starting points;
    deterministic for a given set of runs. (Hoffmann et al. use a Huber loss with a tiny
    delta, which on a grid this small fits a few runs exactly and ignores the rest.)"""
    cols = {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64)
            for k in ("params", "tokens", "unique", "hardness", "val_loss")}  # fmt: skip
    target = cols["val_loss"].log()
    best, best_loss = None, math.inf
    starts = itertools.product((1.0, 30.0), (0.2, 0.5), (30.0, 3000.0), (0.2, 0.5), (2.0, 20.0))
    for a0, alpha0, b0, beta0, r0 in starts:
        values = dict(zip(NAMES, (0.5, a0, alpha0, b0, beta0, r0), strict=True))
        raw = torch.tensor([_raw(v, k) for k, v in values.items()], dtype=torch.float64)
        raw.requires_grad_(True)
        opt = torch.optim.LBFGS([raw], max_iter=500, line_search_fn="strong_wolfe")

        def closure(raw: torch.Tensor = raw, opt: torch.optim.LBFGS = opt) -> torch.Tensor:
            opt.zero_grad()
            pred = _predict_t(raw, cols["params"], cols["tokens"], cols["unique"], cols["hardness"])
            loss = (pred.log() - target).square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        loss = closure().item()
        if math.isfinite(loss) and loss < best_loss:
            best = [c.item() for c in _coefficients(raw.detach())]
            best_loss = loss
    if best is None:
        raise ValueError("the law did not fit these runs")
    return Law(*(float(f"{v:.6g}") for v in best))


def load(path: Path = COEFFS) -> Law:
    return Law(**orjson.loads(path.read_bytes())["law"])


def save(law: Law, runs: int, path: Path = COEFFS) -> None:
    fileio.atomic_write_bytes(path, fileio.json_bytes({"law": asdict(law), "runs": runs}))
