"""Data-parallel train throughput: 1 against N processes under torchrun, and the all-reduce's
share of a step.

Launches itself (`python -m benchmarks data-parallel`) through `torch.distributed.run` once
per process count. Each rank runs the train step of
`make_train_step(grad_sync=distributed.average)` on its own `--batch-size` rows (so N
processes train N times the rows per step); rank 0 reports global tokens/s (median of
`--steps` timed steps after warm-up) and the time of the gradient all-reduce alone.

    python -m benchmarks data-parallel                     # gpt-fast 4/4/128, block 128, 1 vs 2
    python -m benchmarks data-parallel --procs 1 2 --steps 5 --batch-size 8
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from functools import partial

import orjson

from benchmarks import flags
from yocto_fn.bench.proc import python
from yocto_fn.bench.report import print_jsonl, table


@dataclass(frozen=True)
class Config:
    """Train tokens/s of 1 against N torchrun processes, and the all-reduce's share."""

    procs: tuple[int, ...] = (1, 2)
    """Process counts, one run each."""
    model: str = "gpt-fast"
    shape: str = "4/4/128"
    """n_layer/n_head/n_embd."""
    block_size: int = 128
    batch_size: int = 16
    """Rows per rank and step."""
    steps: int = 10
    compile: bool = False
    device: str = "cpu"


def child(cfg: Config) -> None:
    """One rank: time train steps and the all-reduce; rank 0 prints a JSON line."""
    import torch

    from yocto_fn import jit, rng
    from yocto_fn.bench.presets import shape_config
    from yocto_fn.core import models, optim
    from yocto_fn.core.params import to
    from yocto_fn.core.train import make_train_step
    from yocto_fn.run import distributed

    world = distributed.from_env()
    device = distributed.start(world, cfg.device)
    try:
        mcfg = shape_config(cfg.shape, cfg.block_size)
        model = models.get(cfg.model)
        params = to(model.init(mcfg, 0), device)
        tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-3))
        state = tx.init(params)
        sync = partial(distributed.average, world=world)
        if cfg.compile:
            jit.use_safe_cxx()
        step = make_train_step(model, mcfg, tx, grad_sync=sync, compile=cfg.compile)
        gen = torch.Generator().manual_seed(world.rank)
        data = torch.randint(96, (cfg.batch_size, mcfg.block_size + 1), generator=gen)
        batch = (data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device))
        times = []
        for i in range(cfg.steps + 2):
            t0 = time.perf_counter()
            params, state, metrics = step(params, state, batch, rng.key(i))
            metrics["loss"].item()
            times.append(time.perf_counter() - t0)
        grads = params
        reduce = []
        for _ in range(cfg.steps):
            t0 = time.perf_counter()
            distributed.average(grads, torch.zeros((), device=device), world)[1].item()
            reduce.append(time.perf_counter() - t0)
        step_s = statistics.median(times[2:])
        if world.main:
            print(orjson.dumps({
                "processes": world.size, "model": cfg.model, "shape": cfg.shape,
                "block_size": cfg.block_size, "batch_per_rank": cfg.batch_size,
                "compile": cfg.compile, "step_ms": round(step_s * 1000, 1),
                "tokens_per_s": round(world.size * cfg.batch_size * mcfg.block_size / step_s, 1),
                "allreduce_ms": round(statistics.median(reduce) * 1000, 2),
                "allreduce_share": round(statistics.median(reduce) / step_s, 3),
                "threads_per_rank": torch.get_num_threads(), "torch": torch.__version__,
            }).decode())  # fmt: skip
    finally:
        distributed.stop(world)


def run(cfg: Config) -> None:
    """Under torchrun (RANK set) one rank's work; otherwise a torchrun per process count."""
    if "RANK" in os.environ:
        return child(cfg)
    rows = []
    for n in cfg.procs:
        cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               "-m", "benchmarks", "data-parallel", *flags(cfg)]  # fmt: skip
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
        rows.append(orjson.loads(python(cmd, timeout=1800, env=threads).last_line))
    base = rows[0]["tokens_per_s"]
    head = ("processes", "step ms", "tokens/s", "vs first", "all-reduce ms", "share")
    body = [(r["processes"], f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:.0f}",
             f"{r['tokens_per_s'] / base:.2f}x", f"{r['allreduce_ms']:.2f}",
             f"{100 * r['allreduce_share']:.1f}%") for r in rows]  # fmt: skip
    print(table(head, body, "rrrrrr"))
    print_jsonl(rows)
