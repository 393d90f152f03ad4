"""Decode throughput (new tokens/s at batch 1) of every variant: no cache, cache, compiled.

- no cache: greedy, a full forward over the whole sequence for every new token (what a
  cache-less sampler does);
- cache: `sample.generate`, one prefill then one token per call through the KV cache;
- compiled: the same with `compile=True` (the one-token step compiled once, after warm-up).

`block_size` is set to prompt + new tokens so no run slides its window: every mode does the
same work. Contenders are interleaved round by round; the median and min-max are reported.

    python benchmarks/decode_throughput.py                  # 4/4/128 and 6/6/384, 512 tokens
    python benchmarks/decode_throughput.py --shapes 4/4/128 --new-tokens 128 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import orjson
import torch

from yocto_fn import models
from yocto_fn.config import ModelConfig
from yocto_fn.sample import generate

PROMPT_TOKENS = 16


@torch.no_grad()
def no_cache(model, params, cfg: ModelConfig, prompt: torch.Tensor, n: int) -> torch.Tensor:
    seq = prompt
    for _ in range(n):
        logits, _ = model.forward(params, seq, cfg)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1] :]


def runners(name: str, cfg: ModelConfig, n: int, compile: bool) -> dict[str, Callable[[], None]]:
    model = models.get(name)
    params = model.init(cfg, 0)
    prompt = torch.randint(cfg.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator())
    out = {
        "no cache": lambda: no_cache(model, params, cfg, prompt, n),
        "cache": lambda: generate(model, params, cfg, prompt, max_new_tokens=n, temperature=0),
    }
    if compile:
        out["cache compiled"] = lambda: generate(
            model, params, cfg, prompt, max_new_tokens=n, temperature=0, compile=True
        )
    return out


def parse_shape(text: str) -> tuple[int, int, int]:
    n_layer, n_head, n_embd = (int(v) for v in text.split("/"))
    return n_layer, n_head, n_embd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["4/4/128", "6/6/384"], help="L/H/C")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--vocab-size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over)")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()

    rows = []
    for shape in args.shapes:
        n_layer, n_head, n_embd = parse_shape(shape)
        cfg = ModelConfig(
            vocab_size=args.vocab_size, block_size=PROMPT_TOKENS + args.new_tokens,
            n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        )  # fmt: skip
        contenders = {
            (name, mode): fn
            for name in models.NAMES
            for mode, fn in runners(name, cfg, args.new_tokens, not args.skip_compile).items()
        }
        for key, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            print(f"warm-up {shape} {key[0]:>9} {key[1]:<15} {time.perf_counter() - t0:6.1f} s",
                  file=sys.stderr)  # fmt: skip
        rates: dict[tuple[str, str], list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for key, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                rates[key].append(args.new_tokens / (time.perf_counter() - t0))
        for (name, mode), values in rates.items():
            med = statistics.median(values)
            rows.append({
                "variant": name, "mode": mode, "shape": shape, "device": "cpu",
                "dtype": "float32", "batch": 1, "prompt_tokens": PROMPT_TOKENS,
                "new_tokens": args.new_tokens, "tokens_per_s": round(med, 1),
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
