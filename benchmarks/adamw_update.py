"""The AdamW update alone, and the eager train step around it: the functional `_foreach_*`
form against the fused form (`optim.adamw(fused=True)`, torch's fused kernel on copies of
the leaves) and against torch.optim.AdamW (foreach and fused) on the same leaves.

An eager step on a GPU at small sizes is bound by kernel launches, so each update is also
counted: the kernels it launches on CUDA, the aten ops it dispatches elsewhere (a proxy for
the same cost). Contenders run in interleaved rounds; medians are reported.

    python benchmarks/adamw_update.py                        # 6/6/384 on the CPU
    python benchmarks/adamw_update.py --device cuda --out benchmarks/results/<date>-cuda-adamw
    python benchmarks/adamw_update.py --shape 2/2/64 --block-size 32 --batch 4 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.contenders import (  # noqa: E402
    adamw,
    functional_steps,
    random_batch,
    reference_steps,  # noqa: E402
)
from benchmarks.measure import device_name, interleaved, sync  # noqa: E402
from benchmarks.presets import LR  # noqa: E402
from benchmarks.presets import WEIGHT_DECAY as WD  # noqa: E402
from yocto_fn import fileio, models, optim, params  # noqa: E402
from yocto_fn.core.config import ModelConfig  # noqa: E402


def update_contenders(variant: str, cfg: ModelConfig, device: torch.device):
    """Zero-argument AdamW updates of the same leaves and gradients, each keeping its state."""
    p = params.to(models.get(variant).init(cfg, 0), device)
    g = params.tree_map(torch.randn_like, p)
    txs = {name: optim.adamw(LR, weight_decay=WD, fused=name == "fused")
           for name in ("foreach", "fused")}  # fmt: skip
    state = {name: [p, tx.init(p)] for name, tx in txs.items()}

    def functional(name: str) -> Callable[[], Any]:
        def run() -> None:
            updates, state[name][1] = txs[name].update(g, state[name][1], state[name][0])
            state[name][0] = optim.apply_updates(state[name][0], updates)

        return run

    def torch_optim(fused: bool) -> Callable[[], Any]:
        leaves = [t.clone().requires_grad_() for t in params.tree_leaves(p)]
        for leaf, grad in zip(leaves, params.tree_leaves(g), strict=True):
            leaf.grad = grad
        opt = torch.optim.AdamW(leaves, lr=LR, weight_decay=WD, fused=fused, foreach=not fused)
        return opt.step

    return {
        "functional foreach": functional("foreach"),
        "functional fused": functional("fused"),
        "torch.optim foreach": torch_optim(False),
        "torch.optim fused": torch_optim(True),
    }


def step_contenders(variant: str, cfg: ModelConfig, device: torch.device, batch: int):
    """Eager train steps (forward, backward, clip, update) with either AdamW form, and the
    nn.Module reference with torch.optim.AdamW (foreach, and fused)."""
    xy = random_batch(batch, cfg.block_size, device)
    out: dict[str, Callable[[], Any]] = {}
    for fused in (False, True):
        run, _ = functional_steps(variant, cfg, device, xy, tx=adamw(fused))
        out[f"step {variant} {'fused' if fused else 'foreach'}"] = run
    for fused in (False, True):
        name = f"step reference {'fused' if fused else 'foreach'}"
        out[name] = reference_steps(cfg, device, xy, fused=fused)
    return out


def launches(fn: Callable[[], Any], device: torch.device) -> int:
    """Kernels one call launches on CUDA; top-level aten ops it dispatches elsewhere."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::") and not _under_aten(e))


def _under_aten(event: Any) -> bool:
    """True for an aten op called by another aten op (not a dispatch of its own)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variant", default="gpt-fast", choices=models.NAMES)
    ap.add_argument("--shape", default="6/6/384", help="layers/heads/dim")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-steps", action="store_true", help="time the updates only")
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    n_layer, n_head, n_embd = map(int, args.shape.split("/"))
    cfg = ModelConfig(vocab_size=args.vocab, block_size=args.block_size, n_layer=n_layer,
                      n_head=n_head, n_embd=n_embd, dropout=0.0)  # fmt: skip
    fns = update_contenders(args.variant, cfg, device)
    if not args.no_steps:
        fns |= step_contenders(args.variant, cfg, device, args.batch)
    counts = {name: launches(fn, device) for name, fn in fns.items()}
    times = interleaved(fns, device, args.rounds)
    rows = []
    print(f"{args.variant} {args.shape}, block {args.block_size}, batch {args.batch}, "
          f"{device_name(device)}, torch {torch.__version__}, median of {args.rounds}")  # fmt: skip
    unit = "kernels" if device.type == "cuda" else "aten ops"
    for name, seconds in times.items():
        ms = statistics.median(seconds) * 1e3
        spread = {"min_ms": min(seconds) * 1e3, "max_ms": max(seconds) * 1e3}
        rows.append({"contender": name, "ms": ms, **spread, unit.replace(" ", "_"): counts[name]})
        print(f"  {name:24s} {ms:9.3f} ms   {counts[name]:5d} {unit}")
    if args.out is not None:
        command = " ".join(["python benchmarks/adamw_update.py", *(argv or sys.argv[1:])])
        meta = {"date": dt.date.today().isoformat(), "device": device_name(device),
                "torch": torch.__version__, "variant": args.variant, "shape": args.shape,
                "block_size": args.block_size, "batch": args.batch, "rounds": args.rounds,
                "command": command}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(
            args.out / "adamw_update.json",
            orjson.dumps(meta | {"rows": rows}, option=orjson.OPT_INDENT_2),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
