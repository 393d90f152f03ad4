"""Child processes of the benchmarks: the probes that need a fresh process of their own (a
clean allocator, torchrun, a corpus preparation), and `cli.py` as a user runs it
(`benchmarks.cli`).

Every child runs from the folder that holds the package (the checkout) with a time limit,
so a hung child cannot stall a benchmark for ever, and with its output captured; a child that
fails ends the benchmark with its command and the tail of its stderr, which a bare
`check=True` traceback would hide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Finished:
    stdout: str
    stderr: str
    seconds: float  # wall time from start to exit, what a user waits for

    @property
    def last_line(self) -> str:
        """The line a probe child prints its JSON result on, after any other output."""
        return self.stdout.strip().splitlines()[-1]


def python(args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Finished:
    """`python args` (this interpreter) from ROOT; `env` is added to this process's
    environment."""
    start = time.perf_counter()
    full_env = None if env is None else os.environ | dict(env)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode:
        shown = " ".join(textwrap.shorten(a, 40) for a in args[:4]) + " ..." * (len(args) > 4)
        raise SystemExit(f"{shown} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return Finished(proc.stdout, proc.stderr, seconds)
