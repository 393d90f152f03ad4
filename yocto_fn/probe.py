"""Measure this device: seconds per training step of candidate shapes, cached on disk.

`recommend --time-budget` turns a wall-clock budget into steps, so it needs what a step
costs here and now, not a constant. Each shape is timed on the real train step (AdamW, the
same `make_train_step` the trainer runs) on random tokens for about half a second, after
two warm-up steps. Results are cached per device, torch version and thread count in
`$XDG_CACHE_HOME/yocto_fn/probe.json` (default `~/.cache`), so later plans cost nothing.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import orjson
import torch

from . import fileio, models, optim, rng
from .config import ModelConfig
from .params import to
from .train import make_train_step

MIN_SECONDS = 0.5
MAX_STEPS = 20


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


def time_step(model: str, cfg: ModelConfig, batch: int, device: torch.device) -> float:
    """Seconds per optimizer step, fp32, from a fresh random model."""
    m = models.get(model)
    params = to(m.init(cfg, 0), device)
    state = optim.init(params)
    step = make_train_step(m, cfg, optim.AdamW())
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size), generator=gen).to(device)
    base = rng.key(0, device)

    def one(i: int) -> None:
        nonlocal params, state
        params, state, metrics = step(params, state, (x, x), 1e-3, rng.fold_in(base, i))
        metrics["loss"].item()  # wait for the device

    one(0)
    one(1)
    start, n = time.perf_counter(), 0
    while n < MAX_STEPS and (n < 2 or time.perf_counter() - start < MIN_SECONDS):
        one(2 + n)
        n += 1
    return (time.perf_counter() - start) / n


def step_seconds(model: str, cfg: ModelConfig, batch: int, device: torch.device) -> float:
    """`time_step`, through the on-disk cache."""
    path, k = cache_path(), key(device, model, cfg, batch)
    cached = orjson.loads(path.read_bytes()) if path.is_file() else {}
    if k not in cached:
        cached[k] = time_step(model, cfg, batch, device)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write_bytes(path, fileio.json_bytes(cached))
        except OSError:
            pass  # a read-only home only costs the next plan another probe
    return cached[k]
