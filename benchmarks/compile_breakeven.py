"""Wall time of `cli.py sample` with and without `--compile`, as a user runs it.

Every run is a fresh process (imports, checkpoint load, compile or package load, prefill,
decode), so the figure is what a user waits for. The packaged decode step is built once
before timing, so the compiled rows are the second-and-later runs. Runs are interleaved
round by round; the median is reported, and the break-even point is interpolated where the
compiled run becomes no slower than eager.

    python -m benchmarks compile-breakeven                        # 4/4/128, block 512, cpu
    python -m benchmarks compile-breakeven --tokens 100 500 --rounds 1 --shape 1/2/32
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import checkpoint, cli
from yocto_fn.bench.report import print_jsonl, table


@dataclass(frozen=True)
class Config:
    """Wall time of `cli.py sample` with and without --compile, fresh processes."""

    shape: str = "4/4/128"
    """n_layer/n_head/n_embd."""
    block_size: int = 512
    tokens: tuple[int, ...] = (250, 500, 1000, 1500, 3000)
    """New tokens per run, one row each."""
    rounds: int = 3
    """Interleaved rounds (the median is over them)."""
    device: str = "cpu"


def run(cfg: Config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp), cfg.shape, cfg.block_size, device=cfg.device)
        base = ["sample", "--ckpt", str(ckpt), "--temperature", "0", "--device", cfg.device]
        build_s = cli(*base, "--compile", "--max-new-tokens", "1").seconds
        print(f"first --compile run (builds the package): {build_s:.1f} s", file=sys.stderr)
        seconds: dict[tuple[int, str], list[float]] = {}
        for _ in range(cfg.rounds):
            for n in cfg.tokens:
                for mode, extra in (("eager", []), ("compiled", ["--compile"])):
                    wall = cli(*base, *extra, "--max-new-tokens", str(n)).seconds
                    seconds.setdefault((n, mode), []).append(wall)

    rows = []
    for n in cfg.tokens:
        eager = statistics.median(seconds[(n, "eager")])
        compiled = statistics.median(seconds[(n, "compiled")])
        rows.append({"new_tokens": n, "eager_s": round(eager, 3), "compiled_s": round(compiled, 3),
                     "shape": cfg.shape, "block_size": cfg.block_size, "device": cfg.device,
                     "rounds": cfg.rounds, "build_s": round(build_s, 1)})  # fmt: skip
    head = ("new tokens", "eager s", "compiled s", "compiled / eager")
    body = [(r["new_tokens"], f"{r['eager_s']:.2f}", f"{r['compiled_s']:.2f}",
             f"{r['compiled_s'] / r['eager_s']:.2f}x") for r in rows]  # fmt: skip
    print(table(head, body, "rrrr"))
    even = next((r["new_tokens"] for r in rows if r["compiled_s"] <= r["eager_s"]), None)
    print(f"\ncompiled is no slower than eager from {even} new tokens" if even else
          "\ncompiled stays slower than eager at every length measured")  # fmt: skip
    print_jsonl(rows)
