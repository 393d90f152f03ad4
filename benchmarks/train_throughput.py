"""Training throughput (tokens/s) of every variant against an nn.Module reference.

A thin entry point over the suite's contenders (`contenders.train_runner`) for one shape of
your choice: each functional variant eager and compiled, `gpt-fast` eager through
`torch.func.grad_and_value` alone, and the nn.Module reference (`reference_module.py`) eager
and compiled. All run in one process, interleaved round by round (`measure.rates`), so
machine noise hits every contender alike; the median over rounds is reported with the
min-max spread. Prints a table, then one JSON line per contender. The GPU suite builds its
train sections from `contenders` here.

    python -m benchmarks train-throughput            # 4 layers/4 heads/128 dim, block 128
    python -m benchmarks train-throughput --rounds 3 --steps 2 --skip-compile
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from yocto_fn.bench.contenders import VARIANTS, train_runner
from yocto_fn.bench.measure import rates
from yocto_fn.bench.presets import model_config
from yocto_fn.bench.report import print_jsonl, table
from yocto_fn.core import models
from yocto_fn.core.config import ModelConfig

Key = tuple[str, str]  # (variant, mode), a mode of `contenders.train_runner`


@dataclass(frozen=True)
class Config:
    """Train tokens/s of every variant, eager and compiled, against the nn.Module reference."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 32
    vocab_size: int = 96
    rounds: int = 7
    """Interleaved rounds (the median is over them)."""
    steps: int = 3
    """Train steps per contender per round."""
    skip_compile: bool = False
    """Eager contenders only."""


def contenders(keys: Iterable[Key], cfg: ModelConfig, device: torch.device,
               batch_size: int) -> dict[Key, tuple[Callable[[], None], int]]:  # fmt: skip
    """Each (variant, mode) as a call of one train step, with N (the weights that multiply
    activations, for MFU)."""
    return {(v, m): train_runner(v, cfg, device, batch_size, m) for v, m in keys}


def repeated(fn: Callable[[], object], steps: int) -> Callable[[], None]:
    """`fn` called `steps` times per call: a contender's unit of timed work."""

    def run() -> None:
        for _ in range(steps):
            fn()

    return run


def run(cfg: Config) -> None:
    mcfg = model_config(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    cpu = torch.device("cpu")
    modes = ["eager", *([] if cfg.skip_compile else ["compiled"])]
    keys = [(v, m) for m in modes for v in VARIANTS]
    keys.insert(len(models.NAMES), ("gpt-fast", "eager torch.func"))
    runners, warmup_s = {}, {}
    for key, (fn, _) in contenders(keys, mcfg, cpu, cfg.batch_size).items():
        t0 = time.perf_counter()
        fn()
        fn()
        warmup_s[key] = time.perf_counter() - t0
        print(f"warm-up {key[0]:>10} {key[1]:<17} {warmup_s[key]:7.1f} s", file=sys.stderr)
        runners[key] = repeated(fn, cfg.steps)

    per_s = rates(runners, cpu, cfg.rounds, cfg.steps * cfg.batch_size * cfg.block_size)
    base = statistics.median(per_s[("reference", "eager")])
    rows = []
    for (name, mode), values in per_s.items():
        med = statistics.median(values)
        rows.append({
            "variant": name, "mode": mode, "device": "cpu", "dtype": "float32",
            "tokens_per_s": round(med, 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "ratio_vs_reference_eager": round(med / base, 3),
            "repeats": cfg.rounds, "steps_per_repeat": cfg.steps,
            "warmup_s": round(warmup_s[(name, mode)], 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "config": mcfg.to_dict() | {"batch_size": cfg.batch_size},
        })  # fmt: skip
    head = ("variant", "mode", "tokens/s", "min", "max", "vs ref eager")
    print(table(head, [(r["variant"], r["mode"], f"{r['tokens_per_s']:.0f}", f"{r['min']:.0f}",
                        f"{r['max']:.0f}", f"{r['ratio_vs_reference_eager']:.2f}x")
                       for r in rows], "llrrrr") + "\n")  # fmt: skip
    print_jsonl(rows)
