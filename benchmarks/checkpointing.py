"""What activation checkpointing trades: peak memory against train tokens/s.

For each functional variant, a train step with and without `--activation-checkpointing`,
eager or compiled: tokens/s over interleaved rounds (median) and the peak memory of one step
(`memory.peak_mb`, each contender alone in a fresh process). Prints a table, then one JSON
line per contender.

    python -m benchmarks checkpointing                       # 6/6/384, block 256, batch 32
    python -m benchmarks checkpointing --shape 2/2/64 --block-size 64 --batch-size 8 --eager
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from typing import Literal

import torch

from yocto_fn.bench.contenders import train_runner
from yocto_fn.bench.measure import rates
from yocto_fn.bench.memory import peak_mb
from yocto_fn.bench.presets import shape_config
from yocto_fn.bench.report import print_jsonl, table
from yocto_fn.core import models

Variant = Literal[models.NAMES]


@dataclass(frozen=True)
class Config:
    """Activation checkpointing: peak memory of a train step against its tokens/s."""

    shape: str = "6/6/384"
    """n_layer/n_head/n_embd."""
    block_size: int = 256
    batch_size: int = 32
    rounds: int = 5
    """Interleaved rounds (the median is over them)."""
    eager: bool = False
    """Eager steps instead of compiled."""
    variants: tuple[Variant, ...] = models.NAMES
    device: str = "cpu"


def run(cfg: Config) -> None:
    mcfg = shape_config(cfg.shape, cfg.block_size)
    device, base = torch.device(cfg.device), "eager" if cfg.eager else "compiled"
    modes = [base, f"{base} checkpointed"]
    runners, memory = {}, {}
    for variant in cfg.variants:
        for mode in modes:
            fn, _ = train_runner(variant, mcfg, device, cfg.batch_size, mode)
            fn()
            runners[(variant, mode)] = fn
            memory[(variant, mode)] = peak_mb(variant, mcfg.to_dict(), cfg.batch_size, mode,
                                              cfg.device)  # fmt: skip
            print(f"{variant} {mode}: {memory[(variant, mode)]:.0f} MB", file=sys.stderr)
    per_s = rates(runners, device, cfg.rounds, cfg.batch_size * cfg.block_size)

    rows = []
    for variant in cfg.variants:
        plain = (variant, base)
        for mode in modes:
            key = (variant, mode)
            speed = statistics.median(per_s[key]) / statistics.median(per_s[plain])
            mem = memory[key] / memory[plain] if memory[plain] else float("nan")
            rows.append({"variant": variant, "mode": mode, "shape": cfg.shape,
                         "block_size": cfg.block_size, "batch_size": cfg.batch_size,
                         "tokens_per_s": round(statistics.median(per_s[key]), 1),
                         "peak_mb": round(memory[key], 1), "speed_vs_plain": round(speed, 3),
                         "memory_vs_plain": round(mem, 3), "rounds": cfg.rounds,
                         "device": cfg.device, "torch": torch.__version__})  # fmt: skip
    head = ("variant", "mode", "tokens/s", "peak MB", "speed", "memory")
    body = [(r["variant"], r["mode"], f"{r['tokens_per_s']:.0f}", f"{r['peak_mb']:.0f}",
             f"{r['speed_vs_plain']:.2f}x", f"{r['memory_vs_plain']:.2f}x")
            for r in rows]  # fmt: skip
    print(table(head, body, "llrrrr") + "\n")
    print_jsonl(rows)
