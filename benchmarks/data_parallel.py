"""Data-parallel train throughput: 1 against N processes under torchrun, and the all-reduce's
share of a step.

Launches itself through `torch.distributed.run` once per process count. Each rank runs the
train step of `make_train_step(grad_sync=distributed.average)` on its own `--batch-size`
rows (so N processes train N times the rows per step); rank 0 reports global tokens/s (median
of `--steps` timed steps after warm-up) and the time of the gradient all-reduce alone.

    python benchmarks/data_parallel.py                     # gpt-fast 4/4/128, block 128, 1 vs 2
    python benchmarks/data_parallel.py --procs 1 2 --steps 5 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.proc import python  # noqa: E402


def child(args: argparse.Namespace) -> None:
    """One rank: time train steps and the all-reduce; rank 0 prints a JSON line."""
    import torch

    from yocto_fn import jit, models, optim, rng
    from yocto_fn.core.config import ModelConfig
    from yocto_fn.core.params import to
    from yocto_fn.core.train import make_train_step
    from yocto_fn.run import distributed

    world = distributed.from_env()
    device = distributed.start(world, args.device)
    try:
        n_layer, n_head, n_embd = (int(v) for v in args.shape.split("/"))
        cfg = ModelConfig(vocab_size=96, block_size=args.block_size, n_layer=n_layer,
                          n_head=n_head, n_embd=n_embd, dropout=0.0)  # fmt: skip
        model = models.get(args.model)
        params = to(model.init(cfg, 0), device)
        tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-3))
        state = tx.init(params)
        sync = partial(distributed.average, world=world)
        if args.compile:
            jit.use_safe_cxx()
        step = make_train_step(model, cfg, tx, grad_sync=sync, compile=args.compile)
        gen = torch.Generator().manual_seed(world.rank)
        data = torch.randint(96, (args.batch_size, cfg.block_size + 1), generator=gen)
        batch = (data[:, :-1].contiguous().to(device), data[:, 1:].contiguous().to(device))
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            params, state, metrics = step(params, state, batch, rng.key(i))
            metrics["loss"].item()
            times.append(time.perf_counter() - t0)
        grads = params
        reduce = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            distributed.average(grads, torch.zeros((), device=device), world)[1].item()
            reduce.append(time.perf_counter() - t0)
        step_s = statistics.median(times[2:])
        if world.main:
            print(orjson.dumps({
                "processes": world.size, "model": args.model, "shape": args.shape,
                "block_size": args.block_size, "batch_per_rank": args.batch_size,
                "compile": args.compile, "step_ms": round(step_s * 1000, 1),
                "tokens_per_s": round(world.size * args.batch_size * cfg.block_size / step_s, 1),
                "allreduce_ms": round(statistics.median(reduce) * 1000, 2),
                "allreduce_share": round(statistics.median(reduce) / step_s, 3),
                "threads_per_rank": torch.get_num_threads(), "torch": torch.__version__,
            }).decode())  # fmt: skip
    finally:
        distributed.stop(world)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="gpt-fast")
    ap.add_argument("--shape", default="4/4/128", help="n_layer/n_head/n_embd")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="rows per rank and step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if "RANK" in os.environ:
        child(args)
        return
    rows = []
    for n in args.procs:
        cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               str(Path(__file__).resolve()), *sys.argv[1:]]  # fmt: skip
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
        rows.append(orjson.loads(python(cmd, timeout=1800, env=threads).last_line))
    base = rows[0]["tokens_per_s"]
    print(f"{'processes':>9} {'step ms':>8} {'tokens/s':>9} {'vs first':>8} {'all-reduce ms':>13} "
          f"{'share':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['processes']:>9} {r['step_ms']:8.1f} {r['tokens_per_s']:9.0f} "
              f"{r['tokens_per_s'] / base:7.2f}x {r['allreduce_ms']:13.2f} "
              f"{100 * r['allreduce_share']:5.1f}%")  # fmt: skip
    for r in rows:
        print(orjson.dumps(r).decode())


if __name__ == "__main__":
    main()
