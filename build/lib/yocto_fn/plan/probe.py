"""Measure this device: what a training step costs here, cached on disk.

Two callers need a figure only this device can give:
- `recommend --time-budget` turns a wall-clock budget into steps, so it needs the seconds
  of a step of each candidate shape (`step_seconds`).
- `train/sweep --amp auto` needs to know whether bf16 autocast beats fp32 for this run.
  Neither wins everywhere: on a 2-core AVX512-BF16 CPU bf16 is 2x fp32 at 6/6/384 but
  0.82x at 4/4/128 compiled, where the casts cost more than the narrower matmuls save. So
  `amp_auto` times both on the run's own step and keeps the faster.

Steps are the real ones (`make_train_step`, or the ensemble step of a sweep) on random
tokens from a fresh model, after warm-up steps that also absorb compilation. Results are
cached per device, torch version and thread count in `$XDG_CACHE_HOME/yocto_fn/probe.json`
(default `~/.cache`), so a later run or plan of the same shape pays nothing.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import torch

from .. import fileio, jit
from ..core import models, optim, rng
from ..core.config import ModelConfig
from ..core.ensemble import ensemble_init, make_ensemble_step
from ..core.muon import muon, ns_dtype_for
from ..core.params import to
from ..core.train import make_train_step

MIN_SECONDS = 0.5
MAX_STEPS = 20
WARMUP_STEPS = 2
AMP_ROUNDS = 5  # fp32 and bf16 alternate this many times; each keeps its median round
AMP_ROUND_STEPS = 2  # steps per round at least: one slow step then moves no verdict
AMP_ROUND_SECONDS = 0.2


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "yocto_fn" / "probe.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def key(device: torch.device, model: str, cfg: ModelConfig, batch: int) -> str:
    threads = torch.get_num_threads()
    return (f"{device_name(device)}|torch {torch.__version__}|{threads} threads|{model}|"
            f"{cfg.n_layer}/{cfg.n_head}/{cfg.n_embd}|vocab {cfg.vocab_size}|"
            f"{batch}x{cfg.block_size}")  # fmt: skip


@dataclass(frozen=True)
class StepSpec:
    """The training step to time: what changes its cost, nothing that only changes values."""

    model: str
    cfg: ModelConfig
    batch: int
    accum: int = 1
    members: int = 0  # a sweep's ensemble of this many members; 0: one model
    compile: bool = False
    activation_checkpointing: bool = False
    optimizer: str = "adamw"  # or "muon"
    muon_ns_dtype: str = "fp32"  # --muon-ns-dtype

    @property
    def tokens(self) -> int:
        """Training tokens of one optimizer step (all members)."""
        return max(self.members, 1) * self.accum * self.batch * self.cfg.block_size

    def key(self, device: torch.device) -> str:
        extra = [f"accum {self.accum}", f"members {self.members}", f"dropout {self.cfg.dropout}"]
        if self.compile:
            extra.append("compiled")
        if self.activation_checkpointing:
            extra.append("activation checkpointing")
        if self.optimizer != "adamw":
            extra.append(f"{self.optimizer} (newton-schulz {self.muon_ns_dtype})")
        return "|".join([key(device, self.model, self.cfg, self.batch), *extra])


def stepper(
    spec: StepSpec,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    tx: optim.GradientTransformation | None = None,
) -> Callable[[int], float]:
    """`one(i)` runs optimizer step i of `spec` under `amp_dtype`, waits for the device and
    returns the step's loss (summed over members). `tx` replaces the optimizer of
    `spec.optimizer` at its default settings, clipped at 1 (for benchmarks)."""
    m, cfg = models.get(spec.model), spec.cfg
    if tx is None:
        ns_dtype = ns_dtype_for(spec.muon_ns_dtype, amp_dtype)
        inner = muon(ns_dtype=ns_dtype) if spec.optimizer == "muon" else optim.adamw()
        tx = optim.chain(optim.clip_by_global_norm(1.0), inner)
    if spec.compile:
        jit.use_safe_cxx()
    gen = torch.Generator().manual_seed(0)
    lead = ((spec.members,) if spec.members else ()) + ((spec.accum,) if spec.accum > 1 else ())
    x = torch.randint(cfg.vocab_size, (*lead, spec.batch, cfg.block_size), generator=gen)
    x = x.to(device)
    base = rng.key(0, device)
    if spec.members:
        params = ensemble_init(m, cfg, range(spec.members), device)
        state = torch.func.vmap(tx.init)(params)
        step = make_ensemble_step(m, cfg, tx, amp_dtype=amp_dtype,
                                  compile=spec.compile)  # fmt: skip

        def keys(i: int) -> torch.Tensor:
            return torch.stack([rng.fold_in(base, i + j) for j in range(spec.members)])
    else:
        params = to(m.init(cfg, 0), device)
        state = tx.init(params)
        step = make_train_step(
            m, cfg, tx, amp_dtype=amp_dtype, compile=spec.compile,
            activation_checkpointing=spec.activation_checkpointing,
        )  # fmt: skip

        def keys(i: int) -> torch.Tensor:
            return rng.fold_in(base, i)

    def one(i: int) -> float:
        nonlocal params, state
        params, state, metrics = step(params, state, (x, x), keys(i))
        return metrics["loss"].sum().item()  # waits for the device

    return one


def time_step(model: str, cfg: ModelConfig, batch: int, device: torch.device) -> float:
    """Seconds per optimizer step, fp32, from a fresh random model."""
    one = stepper(StepSpec(model, cfg, batch), device, None)
    for i in range(WARMUP_STEPS):
        one(i)
    start, n = time.perf_counter(), 0
    while n < MAX_STEPS and (n < 2 or time.perf_counter() - start < MIN_SECONDS):
        one(WARMUP_STEPS + n)
        n += 1
    return (time.perf_counter() - start) / n


def _cached(k: str, measure: Callable[[], Any]) -> tuple[Any, bool]:
    """The cache's entry `k`, measured and stored first if missing; and whether it was there."""
    path = cache_path()
    try:
        cached = orjson.loads(path.read_bytes()) if path.is_file() else {}
    except orjson.JSONDecodeError:
        cached = {}  # a damaged cache costs one more measurement, never the run
    if k in cached:
        return cached[k], True
    cached[k] = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(path, fileio.json_bytes(cached))
    except OSError:
        pass  # a read-only home only costs the next run another probe
    return cached[k], False


def step_seconds(model: str, cfg: ModelConfig, batch: int, device: torch.device) -> float:
    """`time_step`, through the on-disk cache."""
    return _cached(key(device, model, cfg, batch), lambda: time_step(model, cfg, batch, device))[0]


AMP_CONTENDERS = {"fp32": None, "bf16": torch.bfloat16}


def timed_rounds(
    ones: dict[str, Callable[[int], Any]],
    tokens: int,
    rounds: int,
    min_steps: int,
    min_seconds: float,
) -> dict[str, list[float]]:
    """Tokens/s of each contender per round: all warmed up (and compiled) first, then run
    in alternating rounds of at least `min_steps` steps and `min_seconds`, so that a drift
    in the machine's speed hits every contender alike."""
    done = dict.fromkeys(ones, 0)
    for name, one in ones.items():
        for _ in range(WARMUP_STEPS):
            one(done[name])
            done[name] += 1
    out: dict[str, list[float]] = {name: [] for name in ones}
    for _ in range(rounds):
        for name, one in ones.items():
            start, n = time.perf_counter(), 0
            while n < min_steps or time.perf_counter() - start < min_seconds:
                one(done[name])
                done[name], n = done[name] + 1, n + 1
            out[name].append(n * tokens / (time.perf_counter() - start))
    return out


def amp_rates(spec: StepSpec, device: torch.device) -> dict[str, float]:
    """Training tokens per second of `spec` in fp32 and under bf16 autocast, each the
    median of its `timed_rounds`. A dtype whose loss is not finite after the rounds
    counts as 0 tokens/s: a fast step that trains to NaN is never the pick."""
    finite: dict[str, bool] = {}

    def watched(name: str, one: Callable[[int], float]) -> Callable[[int], None]:
        def run(i: int) -> None:
            finite[name] = math.isfinite(one(i))

        return run

    ones = {
        name: watched(name, stepper(spec, device, dtype)) for name, dtype in AMP_CONTENDERS.items()
    }
    rounds = timed_rounds(ones, spec.tokens, AMP_ROUNDS, AMP_ROUND_STEPS, AMP_ROUND_SECONDS)
    return {
        name: round(statistics.median(r), 1) if finite[name] else 0.0 for name, r in rounds.items()
    }


@dataclass(frozen=True)
class AmpChoice:
    """What `--amp auto` chose, and why: the two rates in training tokens/s (None where
    nothing was timed) and where they came from (measured now, the cache, or a rule)."""

    dtype: torch.dtype | None
    tokens_per_sec: dict[str, float] | None
    source: str

    @property
    def name(self) -> str:
        return next(n for n, d in AMP_CONTENDERS.items() if d is self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.name, "source": self.source, "tokens_per_sec": self.tokens_per_sec}


def amp_auto(spec: StepSpec, device: torch.device, bf16_native: bool) -> AmpChoice:
    """`--amp auto`: fp32 where bf16 has no native units (emulated bf16 is slower at every
    shape), else the faster of fp32 and bf16 for this step as measured (and cached)."""
    if not bf16_native:
        return AmpChoice(None, None, "rule: no native bf16 on this device")
    rates, hit = _cached(f"amp|{spec.key(device)}", lambda: amp_rates(spec, device))
    choice = max(rates, key=rates.get)
    return AmpChoice(AMP_CONTENDERS[choice], rates, "cache" if hit else "measured")
