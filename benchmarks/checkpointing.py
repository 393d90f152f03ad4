"""What activation checkpointing trades: peak memory against train tokens/s.

For each functional variant, a train step with and without `--activation-checkpointing`,
eager or compiled: tokens/s over interleaved rounds (median) and the peak memory of one step
(`memory.peak_mb`, each contender alone in a fresh process). Prints a table, then one JSON
line per contender.

    python benchmarks/checkpointing.py                       # 6/6/384, block 256, batch 32
    python benchmarks/checkpointing.py --shape 2/2/64 --block-size 64 --batch-size 8 --eager
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.contenders import train_runner  # noqa: E402
from benchmarks.measure import interleaved  # noqa: E402
from benchmarks.memory import peak_mb  # noqa: E402
from benchmarks.presets import VOCAB  # noqa: E402
from yocto_fn import models  # noqa: E402
from yocto_fn.core.config import ModelConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="6/6/384", help="n_layer/n_head/n_embd")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over)")
    ap.add_argument("--eager", action="store_true", help="eager steps instead of compiled")
    ap.add_argument("--variants", nargs="+", default=list(models.NAMES))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    n_layer, n_head, n_embd = (int(v) for v in args.shape.split("/"))
    cfg = ModelConfig(vocab_size=VOCAB, block_size=args.block_size, n_layer=n_layer,
                      n_head=n_head, n_embd=n_embd, dropout=0.0)  # fmt: skip
    device, base = torch.device(args.device), "eager" if args.eager else "compiled"
    modes = [base, f"{base} checkpointed"]
    runners, memory = {}, {}
    for variant in args.variants:
        for mode in modes:
            fn, _ = train_runner(variant, cfg, device, args.batch_size, mode)
            fn()
            runners[(variant, mode)] = fn
            memory[(variant, mode)] = peak_mb(variant, cfg.to_dict(), args.batch_size, mode,
                                              args.device)  # fmt: skip
            print(f"{variant} {mode}: {memory[(variant, mode)]:.0f} MB", file=sys.stderr)
    tokens = args.batch_size * args.block_size
    rates = {
        k: [tokens / s for s in v] for k, v in interleaved(runners, device, args.rounds).items()
    }

    print(
        f"\n{'variant':<9} {'mode':<22} {'tokens/s':>9} {'peak MB':>8} {'speed':>6} {'memory':>7}"
    )
    rows = []
    for variant in args.variants:
        plain = (variant, base)
        for mode in modes:
            key = (variant, mode)
            speed = statistics.median(rates[key]) / statistics.median(rates[plain])
            mem = memory[key] / memory[plain] if memory[plain] else float("nan")
            print(f"{variant:<9} {mode:<22} {statistics.median(rates[key]):9.0f} "
                  f"{memory[key]:8.0f} {speed:5.2f}x {mem:6.2f}x")  # fmt: skip
            rows.append({"variant": variant, "mode": mode, "shape": args.shape,
                         "block_size": args.block_size, "batch_size": args.batch_size,
                         "tokens_per_s": round(statistics.median(rates[key]), 1),
                         "peak_mb": round(memory[key], 1), "speed_vs_plain": round(speed, 3),
                         "memory_vs_plain": round(mem, 3), "rounds": args.rounds,
                         "device": args.device, "torch": torch.__version__})  # fmt: skip
    print()
    for row in rows:
        print(orjson.dumps(row).decode())


if __name__ == "__main__":
    main()
