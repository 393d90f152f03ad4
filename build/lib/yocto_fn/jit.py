"""`torch.compile` as this project uses it: static shapes, and a C++ compiler flag that keeps
Inductor's CPU kernels correct.

GCC 12 at -O3 miscompiles one of the kernels Inductor writes for the backward pass of a
bf16-autocast step on AVX-512 CPUs: the vectorised transpose of a bf16 weight into an fp32
gradient buffer comes out wrong, and `train --compile --amp on` turns NaN at its second
step. The same kernel is right at -O2 or with -fno-tree-slp-vectorize (Inductor already
passes -fno-tree-loop-vectorize to GCC for its own reasons). Inductor has no setting for
extra compiler flags, so where its compiler is GCC, `compile` points Inductor at a small
wrapper that runs that GCC with the flag appended. The wrapper lives in this user's cache;
its path is part of Inductor's kernel cache key, so no kernel built without the flag is
reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .fileio import atomic_write_bytes

F = TypeVar("F", bound=Callable)
FLAG = "-fno-tree-slp-vectorize"


def wrapper_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "yocto_fn" / "cxx"


def _is_gcc(cxx: str) -> bool:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in out.stdout and "clang" not in out.stdout.lower()


def gcc_wrapper(cxx: str, directory: Path | None = None) -> Path:
    """An executable `g++` in `directory` (default `wrapper_dir()`) that runs `cxx` with
    FLAG appended (written once).

    Its name must say g++: Inductor picks its GCC-only flags by the compiler's name.
    """
    path = (directory or wrapper_dir()) / "g++"
    script = f'#!/bin/sh\nexec "{cxx}" "$@" {FLAG}\n'.encode()
    if not path.is_file() or path.read_bytes() != script:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, script)
        path.chmod(0o755)
    return path


_checked = False
_wrapped: tuple[Path, str] | None = None  # (wrapper, real compiler) this process uses


def use_safe_cxx() -> None:
    """Point Inductor's CPU compiler at `gcc_wrapper` when it is GCC (Linux only), once per
    process; clang, MSVC, a compiler the user set to something else, or an unwritable cache
    are left alone. A wrapper removed since (a cleared cache) is written again, so later
    compiles never point at a missing file."""
    global _checked, _wrapped
    if _wrapped is not None:
        wrapper, real = _wrapped
        if not wrapper.is_file():
            gcc_wrapper(real, wrapper.parent)
        return
    if _checked or not sys.platform.startswith("linux"):
        return
    _checked = True
    import torch._inductor.config as inductor

    wanted = inductor.cpp.cxx[-1] if isinstance(inductor.cpp.cxx, tuple) else inductor.cpp.cxx
    found = shutil.which(wanted or "")
    if found is None or Path(found).parent == wrapper_dir() or not _is_gcc(found):
        return
    try:
        wrapper = gcc_wrapper(found)
    except OSError:
        return
    inductor.cpp.cxx = (None, str(wrapper))
    _wrapped = (wrapper, found)


def compile(fn: F, mode: str | None = None) -> F:  # noqa: A001 - the one compile entry point
    """`torch.compile(fn, dynamic=False, mode=mode)` after `use_safe_cxx`: every caller
    compiles for fixed shapes (a new shape is a new graph, never a dynamic one).
    `mode="reduce-overhead"` replays the compiled kernels as CUDA graphs on CUDA (on other
    devices it compiles as the default mode does)."""
    use_safe_cxx()
    return torch.compile(fn, dynamic=False, mode=mode)
