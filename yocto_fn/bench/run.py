"""The benchmark suite: every variant and the nn.Module reference on every available device.

Measures train tokens/s (eager, compiled, bf16 autocast) with MFU and peak memory, decode
tokens/s at batch 1 (no cache, cache, compiled cache), prefill latency of a long prompt, an
ensemble of E models trained in one `make_ensemble_step` against E sequential
`make_train_step` calls (eager and compiled, at the `ENSEMBLE_CASES` shapes), and
per-example gradients against a loop of one-sequence gradients and one batch gradient. Every
figure is the median of repeats after warm-up, with the min-max spread; contenders are timed
in interleaved rounds so that machine noise hits them alike.

Writes `benchmarks/results/<date>-<device>/`: `results.jsonl` (one record per measurement),
`table.md` and `chart.png`.

    python cli.py bench --quick                   # < 2 minutes on 2 CPU cores, no compile
    python cli.py bench --preset small            # or: python -m benchmarks suite --preset small
    python cli.py bench --only ensemble per-example

One harness: shapes and options in `presets.py`, the timed calls in `contenders.py`, timing,
FLOPs, peaks and the record schema in `measure.py`; this module runs them and hands the
records to `report.py`.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from yocto_fn.bench.contenders import (
    VARIANTS,
    decode_runners,
    ensemble_runners,
    per_example_runners,
    train_runner,
)
from yocto_fn.bench.measure import (
    datasheet_peak,
    interleaved,
    measured_peak,
    rates,
    record,
    train_flops_per_token,
)
from yocto_fn.bench.memory import peak_mb
from yocto_fn.bench.presets import (
    ENSEMBLE_CASES,
    PARTS,
    PER_EXAMPLE_CASE,
    PRESETS,
    PROMPT,
    BenchConfig,
)
from yocto_fn.bench.report import write_report
from yocto_fn.core import models
from yocto_fn.device import resolve


def bench_device(cfg: BenchConfig, device: torch.device, log: Callable[[str], None]):
    """Every measurement of the suite (or of `cfg.only`) on one device, as validated records.

    Every contender compiles the same step function anew; the compiler's per-function limit
    of recompilations (8) would otherwise turn the later ones silently eager."""
    torch._dynamo.config.recompile_limit = 64
    preset = PRESETS[cfg.preset]
    if cfg.quick:
        preset = replace(preset, new_tokens=32, prompt_tokens=128, batch_size=8)
    repeats = 3 if cfg.quick else cfg.repeats
    with_compile = cfg.compile and not cfg.quick
    compiled = ["compiled"] if with_compile else []
    parts = cfg.only or PARTS
    ctx = (cfg.preset, preset, repeats, log)
    records = []
    if "train" in parts:
        peaks = {t: measured_peak(device, t, cfg.quick) for t in (torch.float32, torch.bfloat16)}
        bf16 = ["bf16", *[f"{c} bf16" for c in compiled]]
        records += bench_train(device, ["eager", *compiled, *bf16], peaks, ctx, not cfg.quick)
    if "decode" in parts:
        quantized = ["compiled cache int8", "compiled cache bf16"] if with_compile else []
        modes = ["no cache", "cache", *[f"{c} cache" for c in compiled], *quantized]
        records += bench_decode(device, modes, ctx)
    if "ensemble" in parts:
        cases = ENSEMBLE_CASES[:1] if cfg.quick else ENSEMBLE_CASES
        records += bench_ensemble(device, ["eager", *compiled], ctx, cases)
    if "per-example" in parts:
        records += bench_per_example(device, ctx, PER_EXAMPLE_CASE)
    return records


def _first_call(fn: Callable[[], Any], log: Callable[[str], None], what: str) -> None:
    t0 = time.perf_counter()
    fn()
    log(f"{what}: first call {time.perf_counter() - t0:.1f} s")


def bench_train(device, modes, peaks, ctx, memory_probe: bool = True) -> list[dict[str, Any]]:
    """Train tokens/s and MFU per variant and mode; peak memory (`memory.peak_mb`, each
    contender in its own process) unless `memory_probe` is off."""
    name, preset, repeats, log = ctx
    mcfg, out = preset.model_config(), []
    tokens = preset.batch_size * mcfg.block_size
    runners, sizes, memory = {}, {}, {}
    for variant in VARIANTS:
        for mode in modes:
            fn, sizes[(variant, mode)] = train_runner(
                variant, mcfg, device, preset.batch_size, mode
            )
            _first_call(fn, log, f"{device.type} train {variant} {mode}")
            runners[(variant, mode)] = fn
            memory[(variant, mode)] = (
                peak_mb(variant, mcfg.to_dict(), preset.batch_size, mode, str(device))
                if memory_probe
                else None
            )
    for (variant, mode), per_s in rates(runners, device, repeats, tokens).items():
        dtype = torch.bfloat16 if mode.endswith("bf16") else torch.float32
        fpt = train_flops_per_token(sizes[(variant, mode)], mcfg)
        sheet, achieved = datasheet_peak(device, dtype), fpt * statistics.median(per_s)
        out.append(record(
            "train", variant, device, mode, name, "throughput", per_s, "tokens/s",
            dtype=str(dtype).removeprefix("torch."), mfu=achieved / peaks[dtype],
            mfu_datasheet=achieved / sheet if sheet else None,
            peak_mem_mb=memory[(variant, mode)], flops_per_token=fpt, peak_flops=peaks[dtype],
            tokens=tokens, config=mcfg.to_dict() | {"batch_size": preset.batch_size},
        ))  # fmt: skip
    return out


def bench_decode(device, modes, ctx) -> list[dict[str, Any]]:
    """Decode and prefill use a block_size that holds the long prompt and the new tokens, so
    no mode has to slide its window."""
    name, preset, repeats, log = ctx
    block = max(preset.block_size, preset.prompt_tokens, PROMPT + preset.new_tokens)
    dcfg, out = preset.model_config(block_size=block), []
    runners = {}
    for variant in VARIANTS:
        for mode, fn in decode_runners(variant, dcfg, device, preset, modes).items():
            _first_call(fn, log, f"{device.type} decode {variant} {mode}")
            runners[(variant, mode)] = fn
    for (variant, mode), seconds in interleaved(runners, device, repeats).items():
        if mode == "prefill":
            ms = [s * 1000 for s in seconds]
            out.append(record("prefill", variant, device, mode, name, "latency", ms, "ms",
                              tokens=preset.prompt_tokens))  # fmt: skip
        else:
            per_s = [preset.new_tokens / s for s in seconds]
            dtype = {"int8": "int8", "bf16": "bfloat16"}.get(mode.rsplit(" ", 1)[-1], "float32")
            out.append(record("decode", variant, device, mode, name, "throughput", per_s,
                              "tokens/s", dtype=dtype, tokens=preset.new_tokens))  # fmt: skip
    return out


def bench_ensemble(device, modes, ctx, cases) -> list[dict[str, Any]]:
    """Ensemble step against the loop, per case and mode; each case is timed on its own
    (interleaved within the case) so that a compiled graph of one shape never waits on
    another's."""
    log, out = ctx[3], []
    for case in cases:
        tokens = case.members * case.batch_size * case.block_size
        runners = {}
        for variant in models.NAMES:
            for mode in modes:
                for label, fn in ensemble_runners(
                    variant, case, device, mode == "compiled"
                ).items():
                    _first_call(fn, log, f"{device.type} ensemble {case.label} {variant} {label}")
                    runners[(variant, label)] = fn
        out += _case_records("ensemble", runners, device, ctx, case, tokens)
    return out


def bench_per_example(device, ctx, case) -> list[dict[str, Any]]:
    log, tokens = ctx[3], case.batch_size * case.block_size
    runners = {}
    for variant in models.NAMES:
        for label, fn in per_example_runners(variant, case, device).items():
            _first_call(fn, log, f"{device.type} per-example {variant} {label}")
            runners[(variant, label)] = fn
    return _case_records("per-example", runners, device, ctx, case, tokens)


def _case_records(benchmark, runners, device, ctx, case, tokens) -> list[dict[str, Any]]:
    """Tokens/s records of the (variant, label) runners at an `EnsembleCase`, interleaved."""
    name, _, repeats, _ = ctx
    return [
        record(benchmark, variant, device, label, name, "throughput", per_s, "tokens/s",
               tokens=tokens, config=vars(case) | {"case": case.label})
        for (variant, label), per_s in rates(runners, device, repeats, tokens).items()
    ]  # fmt: skip


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        out.append("mps")
    return out


def run(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> list[Path]:
    """Run the suite; returns the result directories written."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    written = []
    for name in cfg.device or available_devices():
        device = resolve(name)
        records = bench_device(cfg, device, log)
        out = cfg.out_dir / f"{dt.date.today().isoformat()}-{device.type}"
        write_report(out, records, cfg)
        print((out / "table.md").read_text())
        written.append(out)
    return written
