"""Does `--amp auto` pick the faster dtype? fp32, bf16 and auto's pick, timed in one run.

For each preset (tiny, small), variant and mode (eager, compiled), `probe.amp_auto` first
decides from a cold cache, as a first `train --amp auto` of that shape would (its seconds are
the one-time cost). Then three steps are built and timed interleaved, round by round:
fp32, bf16 autocast, and auto (a step built anew in the dtype auto chose). auto's ratio is
its median tokens/s over the faster of the other two medians: the goal is at least 0.97.

    python benchmarks/amp_auto.py                       # every preset, variant and mode
    python benchmarks/amp_auto.py --presets tiny --modes eager --rounds 3

Writes results.jsonl and table.md to --out-dir (default benchmarks/results/<date>-cpu-amp).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.presets import PRESETS  # noqa: E402
from yocto_fn import fileio, jit, models  # noqa: E402
from yocto_fn.device import bf16_is_native  # noqa: E402
from yocto_fn.plan import probe  # noqa: E402


def measure(preset: str, variant: str, compiled: bool, rounds: int, steps: int) -> dict:
    # Every stepper compiles the same step function: past Dynamo's recompile limit (8 per
    # function) later ones would silently run eager, so each row starts from a clean slate.
    torch._dynamo.reset()
    p = PRESETS[preset]
    spec = probe.StepSpec(variant, p.model_config(), p.batch_size, compile=compiled)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        t0 = time.perf_counter()
        choice = probe.amp_auto(spec, cpu, bf16_is_native(cpu))
        decide_s = time.perf_counter() - t0
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "auto": choice.dtype}
    ones = {name: probe.stepper(spec, cpu, dtype) for name, dtype in dtypes.items()}
    rates = probe.timed_rounds(ones, spec.tokens, rounds, steps, 0.0)
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "preset": preset, "variant": variant, "mode": "compiled" if compiled else "eager",
        "choice": choice.name, "probe_tokens_per_s": choice.tokens_per_sec,
        "decide_s": round(decide_s, 1),
        "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "min": {k: round(min(v), 1) for k, v in rates.items()},
        "max": {k: round(max(v), 1) for k, v in rates.items()},
        "auto_vs_best": round(med["auto"] / max(med["fp32"], med["bf16"]), 3),
        "rounds": rounds, "steps_per_round": steps, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cpu": probe.device_name(cpu),
        "date": dt.date.today().isoformat(),
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    head = (
        "| preset | variant | mode | fp32 tok/s | bf16 tok/s | auto picks | auto tok/s "
        "| auto / best | first-run decision |\n"
        "|---|---|---|---:|---:|---|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['preset']} | {r['variant']} | {r['mode']} | {r['tokens_per_s']['fp32']:,.0f} "
        f"| {r['tokens_per_s']['bf16']:,.0f} | {r['choice']} | {r['tokens_per_s']['auto']:,.0f} "
        f"| {r['auto_vs_best']:.2f} | {r['decide_s']:.0f} s |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--variants", nargs="+", default=list(models.NAMES), choices=models.NAMES)
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                    choices=["eager", "compiled"])  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over)")
    ap.add_argument("--steps", type=int, default=3, help="steps per contender per round")
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=Path(f"benchmarks/results/{dt.date.today().isoformat()}-cpu-amp"),
    )
    args = ap.parse_args()
    if not bf16_is_native(torch.device("cpu")):
        sys.exit("this CPU has no native bf16: auto is fp32 by rule, nothing to measure")
    jit.use_safe_cxx()  # in the real cache, before `measure` points XDG_CACHE_HOME elsewhere
    rows = []
    for preset in args.presets:
        for mode in args.modes:
            for variant in args.variants:
                row = measure(preset, variant, mode == "compiled", args.rounds, args.steps)
                print(orjson.dumps(row).decode(), flush=True)
                rows.append(row)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lines = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    fileio.atomic_write_bytes(args.out_dir / "results.jsonl", lines)
    fileio.atomic_write_bytes(args.out_dir / "table.md", table(rows).encode())
    print(table(rows))


if __name__ == "__main__":
    main()
