"""Decode throughput (new tokens/s at batch 1) of every variant: no cache, cache, compiled.

- no cache: greedy, a full forward over the whole sequence for every new token (what a
  cache-less sampler does);
- cache: `sample.generate`, one prefill then one token per call through the KV cache;
- compiled cache: the same with `compile=True` (the one-token step compiled once, after warm-up).

`block_size` is set to prompt + new tokens so no run slides its window: every mode does the
same work. Contenders are interleaved round by round; the median and min-max are reported.

    python benchmarks/decode_throughput.py                  # 4/4/128 and 6/6/384, 512 tokens
    python benchmarks/decode_throughput.py --shapes 4/4/128 --new-tokens 128 --rounds 1
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

from benchmarks.contenders import decode_runners  # noqa: E402
from benchmarks.measure import interleaved  # noqa: E402
from benchmarks.presets import PROMPT, Preset  # noqa: E402
from yocto_fn import models  # noqa: E402


def parse_shape(text: str) -> tuple[int, int, int]:
    n_layer, n_head, n_embd = (int(v) for v in text.split("/"))
    return n_layer, n_head, n_embd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["4/4/128", "6/6/384"], help="L/H/C")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over)")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()

    cpu, n = torch.device("cpu"), args.new_tokens
    modes = ["no cache", "cache", *([] if args.skip_compile else ["compiled cache"])]
    rows = []
    for shape in args.shapes:
        preset = Preset(*parse_shape(shape), block_size=PROMPT + n, batch_size=1, new_tokens=n,
                        prompt_tokens=PROMPT)  # fmt: skip
        contenders = {
            (name, mode): fn
            for name in models.NAMES
            for mode, fn in decode_runners(name, preset.model_config(), cpu, preset, modes).items()
            if mode != "prefill"
        }
        for (name, mode), fn in contenders.items():
            fn()
            print(f"warmed up {shape} {name} {mode}", file=sys.stderr)
        rates = {
            key: [n / s for s in seconds]
            for key, seconds in interleaved(contenders, cpu, args.rounds).items()
        }
        for (name, mode), values in rates.items():
            med = statistics.median(values)
            rows.append({
                "variant": name, "mode": mode, "shape": shape, "device": "cpu",
                "dtype": "float32", "batch": 1, "prompt_tokens": PROMPT,
                "new_tokens": n, "tokens_per_s": round(med, 1),
                "min": round(min(values), 1), "max": round(max(values), 1),
                "vs_no_cache": round(med / statistics.median(rates[(name, "no cache")]), 2),
                "vs_cache": round(med / statistics.median(rates[(name, "cache")]), 2),
                "repeats": args.rounds, "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            })  # fmt: skip

    print(f"\n{'shape':<8} {'variant':<9} {'mode':<15} {'tokens/s':>9} {'min':>8} {'max':>8} "
          f"{'vs no cache':>11} {'vs cache':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['shape']:<8} {r['variant']:<9} {r['mode']:<15} {r['tokens_per_s']:9.1f} "
            f"{r['min']:8.1f} {r['max']:8.1f} {r['vs_no_cache']:10.2f}x {r['vs_cache']:7.2f}x"
        )
    print()
    for r in rows:
        print(orjson.dumps(r).decode())


if __name__ == "__main__":
    main()
