"""What a per-token loss mask (the chat SFT batch, `(x, y, w)`) costs the train step: the
compiled step at the demo shape (gpt-fast 4/4/128, block 128, batch 32, AdamW clipped at 1
as `plan.probe.stepper` builds it) on `(x, y)` against the same step on `(x, y, w)`, with w
a random 0/1 mask of about --ones ones.

Both run from the same weights in interleaved rounds (`against.timed_rounds`: the order
reverses every other round), --steps steps per call; the table gives each one's median
tokens/s (all tokens of the batch, counted or not) and the masked step's time over the
plain one's as the median of the per-round ratios, held against --budget. A second copy of
the plain step (--control) runs in the same rounds, on the other side of the plain one: its
ratio to the plain step is what two identical steps differ by on this machine now, the floor
under which the masked ratio says nothing.

    python -m benchmarks masked-loss --out benchmarks/results/<dir>
    python -m benchmarks masked-loss --shape 1/2/32 --block-size 16 --batch-size 4 --rounds 2
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import command
from benchmarks.against import timed_rounds
from yocto_fn import jit
from yocto_fn.bench.measure import device_name
from yocto_fn.bench.presets import shape_config
from yocto_fn.bench.report import jsonl, markdown, save, table
from yocto_fn.core import models, optim, rng
from yocto_fn.core.train import Batch, make_train_step

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Config:
    """The compiled train step with a per-token loss mask against without one."""

    model: str = "gpt-fast"
    shape: str = "4/4/128"
    """n_layer/n_head/n_embd (the demo's)."""
    block_size: int = 128
    batch_size: int = 32
    vocab_size: int = 65
    """The demo corpus's characters."""
    ones: float = 0.4
    """The mask's share of ones (counted target tokens)."""
    rounds: int = 31
    """Interleaved rounds."""
    steps: int = 4
    """Train steps per contender per round."""
    compile: bool = True
    control: bool = True
    """Also time a second plain step, for the noise floor of the ratio."""
    budget: float = 1.03
    """The masked step's time over the plain one's that the run is held against."""
    out: Path | None = None
    """A folder for results.jsonl and table.md."""


def batches(cfg: Config) -> dict[str, Batch]:
    """The masked batch, the plain one (the same tokens) and, with --control, the plain one
    again: fixed for the whole run, the plain step between the other two in every round."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), generator=gen)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    w = (torch.rand(y.shape, generator=gen) < cfg.ones).float()
    out = {"masked (x, y, w)": (x, y, w), "plain (x, y)": (x, y)}
    return out | ({"plain again (x, y)": (x, y)} if cfg.control else {})


def stepper(cfg: Config, batch: Batch) -> Callable[[int], float]:
    """`one(i)`: --steps train steps on `batch` from the step's own weights and state, and
    their last loss (which waits for the step)."""
    model = models.get(cfg.model)
    mcfg = shape_config(cfg.shape, cfg.block_size, cfg.vocab_size)
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw())
    step = make_train_step(model, mcfg, tx, compile=cfg.compile)
    state = {"p": model.init(mcfg, 0)}
    state["opt"] = tx.init(state["p"])
    base = rng.key(0)

    def one(i: int) -> float:
        for j in range(cfg.steps):
            key = rng.fold_in(base, i * cfg.steps + j)
            state["p"], state["opt"], metrics = step(state["p"], state["opt"], batch, key)
        return metrics["loss"].item()

    return one


def ratio_row(name: str, times: list[float], plain: list[float], budget: float) -> dict:
    """`times` over `plain` as the median of the per-round ratios (each round times both
    side by side, so the ratio cancels the machine's drift between rounds), and its range."""
    per_round = sorted(t / p for t, p in zip(times, plain, strict=True))
    ratio = statistics.median(per_round)
    return {"contender": f"{name} time / plain time", "ratio": round(ratio, 4),
            "q1 ratio": round(per_round[len(per_round) // 4], 4),
            "q3 ratio": round(per_round[(3 * len(per_round)) // 4], 4),
            "min ratio": round(per_round[0], 4), "max ratio": round(per_round[-1], 4),
            "budget": budget, "within_budget": ratio <= budget}  # fmt: skip


def rows(seconds: dict[str, list[float]], cfg: Config) -> list[dict]:
    """A row per contender (median tokens/s and its range), then the masked step's ratio to
    the plain one and, with --control, the plain copy's."""
    tokens = cfg.steps * cfg.batch_size * cfg.block_size
    out = [{"contender": name, "tokens/s": round(tokens / statistics.median(s), 1),
            "min tokens/s": round(tokens / max(s), 1), "max tokens/s": round(tokens / min(s), 1)}
           for name, s in seconds.items()]  # fmt: skip
    plain = seconds["plain (x, y)"]
    out.append(ratio_row("masked", seconds["masked (x, y, w)"], plain, cfg.budget))
    if cfg.control:
        out.append(ratio_row("plain again", seconds["plain again (x, y)"], plain, cfg.budget))
    return out


def report(records: list[dict], header: str, compiled: bool) -> str:
    steps = [r for r in records if "tokens/s" in r]
    ratios = [r for r in records if "ratio" in r]
    body = table(["contender", "tokens/s", "min–max"],
                 [[r["contender"], f"{r['tokens/s']:,.1f}",
                   f"{r['min tokens/s']:,.1f}–{r['max tokens/s']:,.1f}"] for r in steps],
                 "lrr")  # fmt: skip
    body += "\n\n" + table(
        ["ratio (median of per-round)", "median", "interquartile", "min–max"],
        [[r["contender"], f"{r['ratio']:.3f}", f"{r['q1 ratio']:.3f}–{r['q3 ratio']:.3f}",
          f"{r['min ratio']:.3f}–{r['max ratio']:.3f}"] for r in ratios], "lrrr",
    )  # fmt: skip
    masked = ratios[0]
    verdict = "within" if masked["within_budget"] else "over"
    body += (f"\n\nMasked over plain step time: **{masked['ratio']:.3f}**, {verdict} the "
             f"budget of {masked['budget']:.2f}.")  # fmt: skip
    title = f"Masked loss against plain loss, {'compiled' if compiled else 'eager'} train step"
    return markdown(title, header, {"Results": body})


def run(cfg: Config) -> None:
    if cfg.compile:
        jit.use_safe_cxx()
    fns = {name: stepper(cfg, batch) for name, batch in batches(cfg).items()}
    seconds = timed_rounds(fns, cfg.rounds)
    records = rows(seconds, cfg)
    header = (f"{device_name(CPU)}, torch {torch.__version__}; {cfg.model} {cfg.shape}, block "
              f"{cfg.block_size}, batch {cfg.batch_size}, vocab {cfg.vocab_size}, fp32, "
              f"{'compiled' if cfg.compile else 'eager'}, AdamW clipped at 1; mask "
              f"{cfg.ones:.0%} ones; medians of {cfg.rounds} interleaved rounds of "
              f"{cfg.steps} steps. `{command('masked-loss', cfg)}`")  # fmt: skip
    text = report(records, header, cfg.compile)
    print(text)
    if cfg.out:
        meta = {"header": header, "command": command("masked-loss", cfg)}
        save(cfg.out, {"results.jsonl": jsonl(meta | r for r in records), "table.md": text})
