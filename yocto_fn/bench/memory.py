"""Peak memory of one train step, each contender measured alone in a fresh process.

Measured in one shared process, contenders share an allocator: what one frees the next
reuses, so the figure a contender gets depends on who ran before it (a shared process can
give `gpt`, which keeps its T x T attention probabilities, 60 MB and `gpt-fast` 267 MB at
the same shape). Here every contender gets its own process. It builds its step, runs it once
(warm-up; compilation for the compiled modes), then reports how far one more step raises
the memory above what the process held just before it: activations, gradients and
temporaries, not the parameters and optimizer state that live across steps.

On CPU the figure is the rise of the peak resident set (VmHWM, reset through
/proc/self/clear_refs). Every allocation of 64 KiB or more is set to be its own mapping
(`mallopt`, before torch allocates anything), so freed tensors go back to the system and
the step cannot hide in memory the warm-up left behind. On CUDA it is the allocator's peak
over its allocation before the step.

    python -m yocto_fn.bench.memory gpt eager 32 '{"vocab_size": 96, "block_size": 128, ...}'
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

import orjson

from yocto_fn.bench.proc import python


def peak_mb(variant: str, cfg: dict, batch_size: int, mode: str, device: str) -> float | None:
    """The peak of one train step of a contender (MB), from a fresh process; None where the
    platform has no way to read it (no /proc on macOS)."""
    args = [variant, mode, str(batch_size), orjson.dumps(cfg).decode(), device]
    done = python(["-m", "yocto_fn.bench.memory", *args], timeout=900)
    return orjson.loads(done.last_line)["peak_mb"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _probe(variant: str, mode: str, batch_size: int, cfg: dict, device: str) -> float | None:
    import torch

    from yocto_fn.bench.contenders import train_runner
    from yocto_fn.core.config import ModelConfig

    dev = torch.device(device)
    fn, _ = train_runner(variant, ModelConfig.from_dict(cfg), dev, batch_size, mode)
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - base) / 1024


def main() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD, before torch loads
    variant, mode, batch, cfg, device = sys.argv[1:6]
    peak = _probe(variant, mode, int(batch), orjson.loads(cfg), device)
    print(orjson.dumps({"peak_mb": peak}).decode())


if __name__ == "__main__":
    main()
