"""Decode throughput (new tokens/s at batch 1) of every variant: no cache, cache, compiled.

- no cache: greedy, a full forward over the whole sequence for every new token (what a
  cache-less sampler does);
- cache: `sample.generate`, one prefill then one token per call through the KV cache;
- compiled cache: the same with `compile=True` (the one-token step compiled once, after warm-up).

`block_size` is set to prompt + new tokens so no run slides its window: every mode does the
same work. Contenders are interleaved round by round; the median and min-max are reported.
The GPU suite's decode section starts from `contenders` here.

    python -m benchmarks decode-throughput              # 4/4/128 and 6/6/384, 512 tokens
    python -m benchmarks decode-throughput --shapes 4/4/128 --new-tokens 128 --rounds 1
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from yocto_fn.bench.contenders import decode_runners
from yocto_fn.bench.measure import rates
from yocto_fn.bench.presets import PROMPT, Preset, parse_shape
from yocto_fn.bench.report import print_jsonl, table
from yocto_fn.core import models


@dataclass(frozen=True)
class Config:
    """Batch-1 decode tokens/s of every variant: no cache, the KV cache, compiled."""

    shapes: tuple[str, ...] = ("4/4/128", "6/6/384")
    """Model shapes, L/H/C."""
    new_tokens: int = 512
    rounds: int = 3
    """Interleaved rounds (the median is over them)."""
    skip_compile: bool = False


def preset(shape: str, new_tokens: int) -> Preset:
    """Batch 1, a PROMPT-token prompt, and a block that holds it and the new tokens."""
    return Preset(*parse_shape(shape), block_size=PROMPT + new_tokens, batch_size=1,
                  new_tokens=new_tokens, prompt_tokens=PROMPT)  # fmt: skip


def contenders(variants: Sequence[str], p: Preset, device: torch.device,
               modes: Sequence[str]) -> dict[tuple[str, str], Callable[[], object]]:  # fmt: skip
    """Each variant's decode of `p.new_tokens` in each of `modes` it has (the reference
    decodes without a cache only)."""
    return {
        (name, mode): fn
        for name in variants
        for mode, fn in decode_runners(name, p.model_config(), device, p, list(modes)).items()
        if mode in modes
    }


def run(cfg: Config) -> None:
    cpu, n = torch.device("cpu"), cfg.new_tokens
    modes = ["no cache", "cache", *([] if cfg.skip_compile else ["compiled cache"])]
    rows = []
    for shape in cfg.shapes:
        fns = contenders(models.NAMES, preset(shape, n), cpu, modes)
        for (name, mode), fn in fns.items():
            fn()
            print(f"warmed up {shape} {name} {mode}", file=sys.stderr)
        per_s = rates(fns, cpu, cfg.rounds, n)
        for (name, mode), values in per_s.items():
            med = statistics.median(values)
            rows.append({
                "variant": name, "mode": mode, "shape": shape, "device": "cpu",
                "dtype": "float32", "batch": 1, "prompt_tokens": PROMPT,
                "new_tokens": n, "tokens_per_s": round(med, 1),
                "min": round(min(values), 1), "max": round(max(values), 1),
                "vs_no_cache": round(med / statistics.median(per_s[(name, "no cache")]), 2),
                "vs_cache": round(med / statistics.median(per_s[(name, "cache")]), 2),
                "repeats": cfg.rounds, "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            })  # fmt: skip
    head = ("shape", "variant", "mode", "tokens/s", "min", "max", "vs no cache", "vs cache")
    print(table(head, [(r["shape"], r["variant"], r["mode"], f"{r['tokens_per_s']:.1f}",
                        f"{r['min']:.1f}", f"{r['max']:.1f}", f"{r['vs_no_cache']:.2f}x",
                        f"{r['vs_cache']:.2f}x") for r in rows], "lllrrrrr") + "\n")  # fmt: skip
    print_jsonl(rows)
