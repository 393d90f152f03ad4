"""How the suite measures: FLOPs per token, matmul peaks, timing (interleaved rounds), the
validation losses the quality checks compare (a chat set's over every reply), and the
validated record each measurement becomes.

FLOPs follow the PaLM / nanoGPT convention (biases, norms and softmax are not counted):
    N = weights that multiply activations: every >= 2-D leaf except the `wte`/`wpe` lookup
        tables, plus the V x C output head when it is tied to `wte`;
    forward FLOPs per token at context t = 2 N + 4 L C t (QK^T and attention x V, the full
    t x t product as the kernels compute it); a training token costs 3x the forward:
    6 N + 12 L C T. MFU = FLOPs per token x tokens/s / peak FLOP/s, with the peak measured
    in the same run by a large matmul in the same dtype (and, on CUDA, the datasheet peak).
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from yocto_fn.core import params
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.layers import cross_entropy
from yocto_fn.core.models import Model
from yocto_fn.data import Dataset
from yocto_fn.generate.products import decode_ops
from yocto_fn.plan import probe

# Dense datasheet peaks (FLOP/s) by device-name fragment: (bf16 tensor core, fp32).
DATASHEET = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12),
             "L4": (121e12, 30e12), "A10G": (70e12, 31e12), "T4": (65e12, 8.1e12)}  # fmt: skip


def matmul_params(p: params.Params, cfg: ModelConfig) -> int:
    """N of the module docstring: weights that multiply activations."""
    named = params.named_leaves(p)
    n = sum(t.numel() for k, t in named.items() if t.dim() >= 2 and k not in ("wte", "wpe"))
    return n + (cfg.vocab_size * cfg.n_embd if cfg.tie_weights else 0)


def forward_flops_per_token(n: int, cfg: ModelConfig, context: int) -> int:
    return 2 * n + 4 * cfg.n_layer * cfg.n_embd * context


def train_flops_per_token(n: int, cfg: ModelConfig) -> int:
    return 3 * forward_flops_per_token(n, cfg, cfg.block_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def measured_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """FLOP/s of a large square matmul in `dtype` on `device` (median of repeats). `quick`
    (the dry runs) takes a small one: it checks the path, and a CPU without native bf16
    spends seconds on every large bf16 matmul."""
    n = 256 if quick else (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = statistics.median(timed(lambda: a @ b, device, 2, 5))
    return 2 * n**3 / seconds


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, fp32) in DATASHEET.items():
        if fragment in name:
            return bf16 if dtype == torch.bfloat16 else fp32
    return None


def interleaved(
    fns: dict[Any, Callable[[], Any]], device: torch.device, repeats: int
) -> dict[Any, list[float]]:
    """Seconds per call, one call of each contender per round: machine noise (large on a
    shared host) then hits every contender alike instead of whichever ran during a slow
    spell."""
    out: dict[Any, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            out[key] += timed(fn, device, 0, 1)
    return out


def rates(
    fns: dict[Any, Callable[[], Any]], device: torch.device, repeats: int, work: float
) -> dict[Any, list[float]]:
    """Work per second of each contender, one figure per `interleaved` round: `work` units
    (tokens, steps) per call."""
    return {key: [work / s for s in seconds]
            for key, seconds in interleaved(fns, device, repeats).items()}  # fmt: skip


@torch.no_grad()
def val_loss(model: Model, p: params.Params, cfg: ModelConfig, ds: Dataset, batches: int,
             rows: int, block_size: int) -> float:  # fmt: skip
    """Mean validation loss over `batches` fixed batches (seed 0) of rows x block_size tokens:
    the same tokens for every checkpoint it scores, quantised ones included (their forward
    runs with the primitives a decode over them takes)."""
    gen, ops = torch.Generator().manual_seed(0), decode_ops(p, compiled=False)
    total = 0.0
    for _ in range(batches):
        x, y = ds.get_batch("val", rows, block_size, gen)
        total += cross_entropy(model.forward(p, x, cfg, ops=ops)[0], y).item()
    return total / batches


@torch.no_grad()
def assistant_loss(model: Model, p: params.Params, cfg: ModelConfig, ds: Dataset,
                   split: str = "val", rows: int = 64) -> float:  # fmt: skip
    """Mean loss per assistant token over every conversation of a chat split, in order:
    exact, where a run's evaluation averages random batches (each reply token counts once,
    a long reply no more per token than a short one)."""
    total, tokens = 0.0, 0.0
    count = len(ds.starts[split])
    for first in range(0, count, rows):
        picks = np.arange(first, min(first + rows, count))
        x, y, w = ds.chat_rows(split, picks, cfg.block_size)
        per_token = cross_entropy(model.forward(p, x, cfg)[0], y, reduction="none")
        total += (per_token * w.flatten()).sum().item()
        tokens += w.sum().item()
    return total / tokens


REQUIRED: dict[str, type | tuple[type, ...]] = {
    "benchmark": str, "variant": str, "device": str, "device_name": str, "dtype": str,
    "mode": str, "preset": str, "metric": str, "value": float, "unit": str, "min": float,
    "max": float, "repeats": int, "torch": str, "date": str,
}  # fmt: skip
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "mfu": float, "mfu_datasheet": float, "peak_mem_mb": float, "flops_per_token": int,
    "peak_flops": float, "tokens": int, "config": dict,
}  # fmt: skip
BENCHMARKS = {"train", "decode", "prefill", "ensemble", "per-example"}


def validate(record: dict[str, Any]) -> None:
    """Raise ValueError unless `record` follows the results.jsonl schema."""
    for key, kind in REQUIRED.items():
        if key not in record:
            raise ValueError(f"record lacks {key!r}: {record}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise ValueError(f"{key!r} should be {kind}, got {record[key]!r}")
    for key, value in record.items():
        if key not in REQUIRED and key not in OPTIONAL:
            raise ValueError(f"unknown field {key!r}")
        if key in OPTIONAL and value is not None and not isinstance(value, OPTIONAL[key]):
            raise ValueError(f"{key!r} should be {OPTIONAL[key]}, got {value!r}")
    if record["benchmark"] not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {record['benchmark']!r}")
    if not record["min"] <= record["value"] <= record["max"]:
        raise ValueError(f"value outside its spread: {record}")


def device_name(device: torch.device) -> str:
    """The device as records name it: the GPU or CPU model, and a CPU's cores and threads."""
    if device.type == "mps":
        return "Apple MPS"
    name = probe.device_name(device)
    if device.type == "cpu":
        return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return name


def record(
    benchmark: str, variant: str, device: torch.device, mode: str, preset: str,
    metric: str, values: list[float], unit: str, dtype: str = "float32", **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    rec = {
        "benchmark": benchmark, "variant": variant, "device": device.type,
        "device_name": device_name(device), "dtype": dtype, "mode": mode, "preset": preset,
        "metric": metric, "value": float(statistics.median(values)), "unit": unit,
        "min": float(min(values)), "max": float(max(values)), "repeats": len(values),
        "torch": torch.__version__, "date": dt.date.today().isoformat(),
    } | {k: v for k, v in extra.items() if v is not None}  # fmt: skip
    validate(rec)
    return rec
