"""The loss law `recommend` plans with, fitted to a grid of training runs.

    L(N, D, U, h) = h * (e + A / N**alpha + B / D**beta + C * (N / 1e6)**gamma * R**delta)

N is the parameter count, D the tokens seen, U the unique tokens of the training split,
R = max(D / U - 1, 0) the passes beyond the first, and h how hard the corpus is: the
held-out entropy of a trigram model (`corpus_hardness`). The grid's two full corpora
differ in h by a factor 1.25 and in val loss by 1.28-1.39, their 200k-character cuts by
1.16 and 1.12-1.16, across the fitted runs' shapes and lengths: h scales the whole curve
rather than shifting its floor. (lzma's compressed size, tried first, ranked an unseen
corpus of prose as far harder than it trains.)

The first three terms are the usual power law in model size and tokens seen. The last is
memorisation: repeated passes over a small corpus turn into a higher val loss, faster the
larger the model (a 4/4/128 on 180k tokens: 1.57 after 11 passes, 1.63 after 22). It is
what makes `recommend` stop a plan short of a long budget. A discount on repeated tokens
instead (D_eff, after Muennighoff et al.) fits the grid worse (largest error 0.18 against
0.11), and beside this term its horizon runs off to infinity; a factor in U beside R fits
an exponent that makes a larger corpus overfit faster, which is noise. Neither is kept.
The coefficients live in `law.json` beside this file and are refitted by
`scripts/recommend_grid.py --fit`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import torch

from .. import fileio

COEFFS = Path(__file__).with_name("law.json")
SAMPLE_TOKENS = 1 << 20


@dataclass(frozen=True)
class Law:
    e: float
    a: float
    alpha: float
    b: float
    beta: float
    c: float
    gamma: float
    delta: float

    def predict(self, n: float, d: float, u: float, h: float) -> float:
        """Expected validation loss (nats per token)."""
        overfit = self.c * (n / 1e6) ** self.gamma * max(d / u - 1, 0) ** self.delta
        return h * (self.e + self.a / n**self.alpha + self.b / d**self.beta + overfit)


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


# Exponents are kept in ranges the literature and our runs support, so a small grid cannot
# fit a law that extrapolates wildly.
BOUNDS = {"alpha": (0.05, 1.5), "beta": (0.05, 1.5), "gamma": (0.25, 4.0), "delta": (0.25, 4.0)}
NAMES = ("e", "a", "alpha", "b", "beta", "c", "gamma", "delta")


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
    e, a, alpha, b, beta, c, gamma, delta = _coefficients(raw)
    overfit = c * (n / 1e6) ** gamma * torch.clamp(d / u - 1, min=0) ** delta
    return h * (e + a / n**alpha + b / d**beta + overfit)


def fit(rows: list[dict]) -> Law:
    """Least squares on log(loss), by L-BFGS from a small grid of starting points;
    deterministic for a given set of runs. (Hoffmann et al. use a Huber loss with a tiny
    delta, which on a grid this small fits a few runs exactly and ignores the rest.)"""
    cols = {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64)
            for k in ("params", "tokens", "unique", "hardness", "val_loss")}  # fmt: skip
    target = cols["val_loss"].log()
    best, best_loss = None, math.inf
    starts = itertools.product((1.0, 30.0), (0.2, 0.5), (30.0, 3000.0), (0.2, 0.5), (1.0, 2.0))
    for a0, alpha0, b0, beta0, delta0 in starts:
        values = dict(zip(NAMES, (0.5, a0, alpha0, b0, beta0, 1e-3, 1.0, delta0), strict=True))
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
