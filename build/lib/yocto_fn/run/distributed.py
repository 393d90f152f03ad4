"""Data parallelism on torch.distributed, for `torchrun --nproc-per-node N cli.py train ...`.

torchrun starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; without
them nothing here runs and training is one process. Every rank draws the same global batch
starts from the shared data generator and reads only its own slice of rows, so N ranks with
`--batch-size B` see exactly the rows of one process with batch N*B, and a checkpoint
resumes on any number of ranks. Gradients (and the loss) are averaged by one all-reduce of
one flat fp32 buffer per optimizer step, through functional collectives, so a compiled step
keeps the all-reduce inside its graph. gloo (CPU) sums fp32 and divides; nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from ..core.params import Params, tree_leaves, tree_unflatten_like
from ..device import resolve

TIMEOUT = timedelta(seconds=120)  # a collective waiting longer than this ends the job


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # under torchrun (even with one process)

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and plots and shows progress."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of size * batch_size."""
        return slice(self.rank * batch_size, (self.rank + 1) * batch_size)


SINGLE = World()  # one process, no torchrun


def from_env() -> World:
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return SINGLE
    return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), True)


def start(world: World, device: str) -> torch.device:
    """This rank's device (`LOCAL_RANK` on CUDA) and, under torchrun, the process group."""
    dev = resolve(device)
    if not world.launched:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=dev if dev.type == "cuda" else None)
    return dev


def stop(world: World) -> None:
    """Leave the process group (also after an error or Ctrl-C). Compile workers are shut
    down first: left running, they made the gloo teardown abort."""
    if not (world.launched and dist.is_initialized()):
        return
    from torch._inductor.async_compile import shutdown_compile_workers

    shutdown_compile_workers()
    dist.destroy_process_group()


def average(grads: Params, value: torch.Tensor, world: World) -> tuple[Params, torch.Tensor]:
    """Mean of every rank's gradients and `value` (the loss, or the loss and the step's stop
    flag, see `train.make_train_step`): one all-reduce of one flat fp32 buffer, so what the
    ranks must agree on costs no collective of its own."""
    leaves = tree_leaves(grads)
    flat = torch.cat([g.reshape(-1).float() for g in leaves] + [value.reshape(-1).float()])
    flat = funcol.all_reduce(flat, "sum", dist.group.WORLD) / world.size
    parts = flat.split([g.numel() for g in leaves] + [value.numel()])
    out = [p.view_as(g).to(g.dtype) for p, g in zip(parts, leaves, strict=False)]
    return tree_unflatten_like(grads, out), parts[-1].view_as(value).to(value.dtype)


def mean(x: float, world: World, device: torch.device) -> float:
    """The mean of a host float over the ranks (evaluation losses)."""
    if not world.launched:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world.size


def from_main(x: float, world: World, device: torch.device) -> float:
    """Rank 0's value of a host float on every rank (a choice all ranks must share)."""
    if not world.launched:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t)
