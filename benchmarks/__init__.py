"""Benchmarks that time the same public functions users call, behind one entry point:

    python -m benchmarks                      # every benchmark, one line each
    python -m benchmarks <name> --help        # its flags (each also as --a_b)
    python -m benchmarks <name> [flags]

Each module holds a frozen `Config` dataclass (its flags) and `run(cfg)`; `__main__.py`
lists and dispatches them. They measure with the package's harness (`yocto_fn.bench`); what
they need of this checkout besides it is here: `cli.py` run as a user runs it, a checkpoint
trained through it, and a config written back as the flags that give it.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from yocto_fn.bench.proc import Finished, python

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 3600) -> Finished:
    """One `cli.py args` process, start to exit."""
    return python([str(ROOT / "cli.py"), *args], timeout)


def checkpoint(root: Path, shape: str, block_size: int, *, model: str = "gpt-fast",
               batch_size: int = 1, iters: int = 1, device: str = "cpu") -> Path:  # fmt: skip
    """`latest.pt` of a short `train` run of `model` at an "L/H/C" `shape` on the embedded
    corpus, under `root` (prepared and trained once; the weights barely matter for timing)."""
    n_layer, n_head, n_embd = shape.split("/")
    data, run = root / "data", root / f"{model}-{shape.replace('/', '-')}-{block_size}"
    if not (data / "meta.json").is_file():
        cli("prepare-char", "--out-dir", str(data))
    if not (run / "latest.pt").is_file():
        cli("train", "--data-dir", str(data), "--ckpt-dir", str(run), "--model", model,
            "--n-layer", n_layer, "--n-head", n_head, "--n-embd", n_embd,
            "--block-size", str(block_size), "--batch-size", str(batch_size),
            "--max-iters", str(iters), "--eval-interval", str(iters), "--eval-iters", "1",
            "--device", device, "--amp", "off")  # fmt: skip
    return run / "latest.pt"


def flags(cfg: Any) -> list[str]:
    """The flags that give the config `cfg`: one for each field off its default."""
    out = []
    for field in dataclasses.fields(cfg):
        value, name = getattr(cfg, field.name), field.name.replace("_", "-")
        if field.default is not dataclasses.MISSING and value == field.default:
            continue
        if isinstance(value, bool):
            out.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, tuple):
            out += [f"--{name}", *map(str, value)]
        else:
            out += [f"--{name}", str(value)]
    return out


def command(name: str, cfg: Any) -> str:
    """The command line that runs benchmark `name` with `cfg`, as results record it."""
    return shlex.join(["python", "-m", "benchmarks", name, *flags(cfg)])
