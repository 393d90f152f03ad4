"""Training throughput (tokens/s) of every variant against an nn.Module reference.

A thin entry point over the suite's contenders (`contenders.train_runner`) for one shape of
your choice: each functional variant eager and compiled, `gpt-fast` eager through
`torch.func.grad_and_value` alone, and the nn.Module reference (`reference_module.py`) eager
and compiled. All run in one process, interleaved round by round (`measure.interleaved`),
so machine noise hits every contender alike; the median over rounds is reported with the
min-max spread. Prints a table, then one JSON line per contender.

    python benchmarks/train_throughput.py            # 4 layers/4 heads/128 dim, block 128
    python benchmarks/train_throughput.py --rounds 3 --steps 2 --skip-compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.contenders import train_runner  # noqa: E402
from benchmarks.measure import interleaved  # noqa: E402
from yocto_fn import models  # noqa: E402
from yocto_fn.core.config import ModelConfig  # noqa: E402


def repeated(fn: Callable[[], object], steps: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(steps):
            fn()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over)")
    ap.add_argument("--steps", type=int, default=3, help="train steps per contender per round")
    ap.add_argument("--skip-compile", action="store_true", help="eager contenders only")
    args = ap.parse_args()

    cfg = ModelConfig(
        vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
        n_head=args.n_head, n_embd=args.n_embd, dropout=0.0,
    )  # fmt: skip
    cpu = torch.device("cpu")
    modes = ["eager", *([] if args.skip_compile else ["compiled"])]
    keys = [(v, m) for m in modes for v in (*models.NAMES, "reference")]
    keys.insert(len(models.NAMES), ("gpt-fast", "eager torch.func"))
    runners = {}
    warmup_s = {}
    for variant, mode in keys:
        fn, _ = train_runner(variant, cfg, cpu, args.batch_size, mode)
        t0 = time.perf_counter()
        fn()
        fn()
        warmup_s[(variant, mode)] = time.perf_counter() - t0
        print(f"warm-up {variant:>10} {mode:<17} {warmup_s[(variant, mode)]:7.1f} s",
              file=sys.stderr)  # fmt: skip
        runners[(variant, mode)] = repeated(fn, args.steps)

    tokens = args.steps * args.batch_size * cfg.block_size
    rates = {
        key: [tokens / s for s in seconds]
        for key, seconds in interleaved(runners, cpu, args.rounds).items()
    }
    base = statistics.median(rates[("reference", "eager")])
    print(
        f"\n{'variant':<10} {'mode':<17} {'tokens/s':>9} {'min':>9} {'max':>9} {'vs ref eager':>12}"
    )
    rows = []
    for (name, mode), values in rates.items():
        med = statistics.median(values)
        print(
            f"{name:<10} {mode:<17} {med:9.0f} {min(values):9.0f} {max(values):9.0f} "
            f"{med / base:11.2f}x"
        )
        rows.append(
            {
                "variant": name, "mode": mode, "device": "cpu", "dtype": "float32",
                "tokens_per_s": round(med, 1), "min": round(min(values), 1),
                "max": round(max(values), 1), "ratio_vs_reference_eager": round(med / base, 3),
                "repeats": args.rounds, "steps_per_repeat": args.steps,
                "warmup_s": round(warmup_s[(name, mode)], 1), "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "config": cfg.to_dict() | {"batch_size": args.batch_size},
            }
        )  # fmt: skip
    print()
    for row in rows:
        print(orjson.dumps(row).decode())


if __name__ == "__main__":
    main()
