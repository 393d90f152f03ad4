"""Wall time of `cli.py sample` with and without `--compile`, as a user runs it.

Every run is a fresh process (imports, checkpoint load, compile or package load, prefill,
decode), so the figure is what a user waits for. The packaged decode step is built once
before timing, so the compiled rows are the second-and-later runs. Runs are interleaved
round by round; the median is reported, and the break-even point is interpolated where the
compiled run becomes no slower than eager.

    python benchmarks/compile_breakeven.py                        # 4/4/128, block 512, cpu
    python benchmarks/compile_breakeven.py --tokens 100 500 --rounds 1 --shape 1/2/32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proc import cli  # noqa: E402


def checkpoint(tmp: Path, shape: str, block: int, device: str) -> Path:
    """A one-step checkpoint of gpt-fast at `shape` (weights barely matter for timing)."""
    n_layer, n_head, n_embd = shape.split("/")
    cli("prepare-char", "--out-dir", str(tmp / "data"))
    cli("train", "--data-dir", str(tmp / "data"), "--ckpt-dir", str(tmp / "run"),
        "--model", "gpt-fast", "--n-layer", n_layer, "--n-head", n_head, "--n-embd", n_embd,
        "--block-size", str(block), "--batch-size", "1", "--max-iters", "1",
        "--eval-interval", "1", "--eval-iters", "1", "--device", device)  # fmt: skip
    return tmp / "run" / "latest.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4/4/128", help="n_layer/n_head/n_embd")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--tokens", type=int, nargs="+", default=[250, 500, 1000, 1500, 3000])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp), args.shape, args.block_size, args.device)
        base = ["sample", "--ckpt", str(ckpt), "--temperature", "0", "--device", args.device]
        build_s = cli(*base, "--compile", "--max-new-tokens", "1").seconds
        print(f"first --compile run (builds the package): {build_s:.1f} s", file=sys.stderr)
        seconds: dict[tuple[int, str], list[float]] = {}
        for _ in range(args.rounds):
            for n in args.tokens:
                for mode, extra in (("eager", []), ("compiled", ["--compile"])):
                    wall = cli(*base, *extra, "--max-new-tokens", str(n)).seconds
                    seconds.setdefault((n, mode), []).append(wall)

    rows = []
    print(f"\n{'new tokens':>10} {'eager s':>8} {'compiled s':>10} {'compiled / eager':>16}")
    for n in args.tokens:
        eager = statistics.median(seconds[(n, "eager")])
        compiled = statistics.median(seconds[(n, "compiled")])
        print(f"{n:>10} {eager:8.2f} {compiled:10.2f} {compiled / eager:15.2f}x")
        rows.append({"new_tokens": n, "eager_s": round(eager, 3), "compiled_s": round(compiled, 3),
                     "shape": args.shape, "block_size": args.block_size, "device": args.device,
                     "rounds": args.rounds, "build_s": round(build_s, 1)})  # fmt: skip
    even = next((r["new_tokens"] for r in rows if r["compiled_s"] <= r["eager_s"]), None)
    print(f"\ncompiled is no slower than eager from {even} new tokens" if even else
          "\ncompiled stays slower than eager at every length measured")  # fmt: skip
    for row in rows:
        print(orjson.dumps(row).decode())


if __name__ == "__main__":
    main()
