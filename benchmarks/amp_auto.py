"""Does `--amp auto` pick the faster dtype? fp32, bf16 and auto's pick, timed in one run.

For each preset (tiny, small), variant and mode (eager, compiled), `probe.amp_auto` first
decides from a cold cache, as a first `train --amp auto` of that shape would (its seconds are
the one-time cost). Then three steps are built and timed interleaved, round by round:
fp32, bf16 autocast, and auto (a step built anew in the dtype auto chose). auto's ratio is
its median tokens/s over the faster of the other two medians: the goal is at least 0.97.

    python -m benchmarks amp-auto                       # every preset, variant and mode
    python -m benchmarks amp-auto --presets tiny --modes eager --rounds 3

Writes results.jsonl and table.md to --out-dir (default benchmarks/results/<date>-cpu-amp).
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from yocto_fn import jit
from yocto_fn.bench.presets import PRESETS
from yocto_fn.bench.report import jsonl, print_jsonl, save, table
from yocto_fn.core import models
from yocto_fn.device import bf16_is_native
from yocto_fn.errors import UserError
from yocto_fn.plan import probe

Variant = Literal[models.NAMES]
Mode = Literal["eager", "compiled"]


@dataclass(frozen=True)
class Config:
    """Does --amp auto pick the faster dtype? fp32, bf16 and auto's pick, timed in one run."""

    presets: tuple[Literal["tiny", "small"], ...] = tuple(PRESETS)
    variants: tuple[Variant, ...] = models.NAMES
    modes: tuple[Mode, ...] = ("eager", "compiled")
    rounds: int = 5
    """Interleaved rounds (the median is over them)."""
    steps: int = 3
    """Steps per contender per round."""
    out_dir: Path = Path(f"benchmarks/results/{dt.date.today().isoformat()}-cpu-amp")


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


def amp_table(rows: list[dict]) -> str:
    head = ("preset", "variant", "mode", "fp32 tok/s", "bf16 tok/s", "auto picks", "auto tok/s",
            "auto / best", "first-run decision")  # fmt: skip
    return table(head, [
        (r["preset"], r["variant"], r["mode"], f"{r['tokens_per_s']['fp32']:,.0f}",
         f"{r['tokens_per_s']['bf16']:,.0f}", r["choice"], f"{r['tokens_per_s']['auto']:,.0f}",
         f"{r['auto_vs_best']:.2f}", f"{r['decide_s']:.0f} s")
        for r in rows
    ], "lllrrlrrr") + "\n"  # fmt: skip


def run(cfg: Config) -> None:
    if not bf16_is_native(torch.device("cpu")):
        raise UserError("this CPU has no native bf16: auto is fp32 by rule, nothing to measure")
    jit.use_safe_cxx()  # in the real cache, before `measure` points XDG_CACHE_HOME elsewhere
    rows = []
    for preset in cfg.presets:
        for mode in cfg.modes:
            for variant in cfg.variants:
                row = measure(preset, variant, mode == "compiled", cfg.rounds, cfg.steps)
                print_jsonl([row])
                rows.append(row)
    text = amp_table(rows)
    save(cfg.out_dir, {"results.jsonl": jsonl(rows), "table.md": text})
    print(text)
