"""The AdamW update alone, and the eager train step around it: the functional `_foreach_*`
form against the fused form (`optim.adamw(fused=True)`, torch's fused kernel on copies of
the leaves) and against torch.optim.AdamW (foreach and fused) on the same leaves.

An eager step on a GPU at small sizes is bound by kernel launches, so each update is also
counted: the kernels it launches on CUDA, the aten ops it dispatches elsewhere (a proxy for
the same cost). Contenders run in interleaved rounds; medians are reported.

    python -m benchmarks adamw-update                        # 6/6/384 on the CPU
    python -m benchmarks adamw-update --device cuda --out benchmarks/results/<date>-cuda-adamw
    python -m benchmarks adamw-update --shape 2/2/64 --block-size 32 --batch 4 --rounds 3
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import torch

from benchmarks import command
from yocto_fn.bench.contenders import adamw, functional_steps, random_batch, reference_steps
from yocto_fn.bench.measure import device_name, interleaved, sync
from yocto_fn.bench.presets import LR, shape_config
from yocto_fn.bench.presets import WEIGHT_DECAY as WD
from yocto_fn.bench.report import save
from yocto_fn.core import models, optim, params
from yocto_fn.core.config import ModelConfig


@dataclass(frozen=True)
class Config:
    """The AdamW update alone and the eager step around it, against torch.optim, with the
    kernels (or aten ops) each launches."""

    device: str = "cpu"
    variant: Literal[models.NAMES] = "gpt-fast"
    shape: str = "6/6/384"
    """n_layer/n_head/n_embd."""
    block_size: int = 256
    batch: int = 16
    vocab: int = 96
    rounds: int = 15
    steps: bool = True
    """Time the eager train steps too (--no-steps: the updates only)."""
    out: Path | None = None
    """A folder to write adamw_update.json into."""


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


def contenders(variant: str, cfg: ModelConfig, device: torch.device, batch: int,
               steps: bool = True) -> dict[str, Callable[[], Any]]:  # fmt: skip
    """The updates, and with `steps` the eager train steps around them."""
    fns = update_contenders(variant, cfg, device)
    return fns | (step_contenders(variant, cfg, device, batch) if steps else {})


def measure(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int) -> list[dict]:
    """A row per contender: ms per call over interleaved rounds (median, min, max) and the
    launches one call makes ("kernels" on CUDA, else "aten_ops")."""
    unit = "kernels" if device.type == "cuda" else "aten_ops"
    counts = {name: launches(fn, device) for name, fn in fns.items()}
    return [
        {"contender": name, "ms": statistics.median(seconds) * 1e3, "min_ms": min(seconds) * 1e3,
         "max_ms": max(seconds) * 1e3, unit: counts[name]}
        for name, seconds in interleaved(fns, device, rounds).items()
    ]  # fmt: skip


def run(cfg: Config) -> None:
    device = torch.device(cfg.device)
    mcfg = shape_config(cfg.shape, cfg.block_size, cfg.vocab)
    rows = measure(contenders(cfg.variant, mcfg, device, cfg.batch, cfg.steps), device,
                   cfg.rounds)  # fmt: skip
    print(f"{cfg.variant} {cfg.shape}, block {cfg.block_size}, batch {cfg.batch}, "
          f"{device_name(device)}, torch {torch.__version__}, median of {cfg.rounds}")  # fmt: skip
    unit = "kernels" if device.type == "cuda" else "aten ops"
    for r in rows:
        print(f"  {r['contender']:24s} {r['ms']:9.3f} ms   {r[unit.replace(' ', '_')]:5d} {unit}")
    if cfg.out is not None:
        meta = {"date": dt.date.today().isoformat(), "device": device_name(device),
                "torch": torch.__version__, "variant": cfg.variant, "shape": cfg.shape,
                "block_size": cfg.block_size, "batch": cfg.batch, "rounds": cfg.rounds,
                "command": command("adamw-update", cfg)}  # fmt: skip
        json = orjson.dumps(meta | {"rows": rows}, option=orjson.OPT_INDENT_2)
        save(cfg.out, {"adamw_update.json": json})
