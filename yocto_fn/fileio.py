"""Atomic file writes: a crash or a bad input never leaves a half-written output behind.

Each file is written to a temporary name in its destination directory, flushed and fsynced,
and only then moved over the destination with `os.replace` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

import orjson

Writer = Callable[[BinaryIO], None]


def _default_mode() -> int:
    """0o666 minus the process umask: what a plain open() would have created."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_temp(dest: Path, write: Writer) -> Path:
    """Write a temporary sibling of `dest` with `write(f)`, fsynced; returns its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def commit(pending: dict[Path, Path]) -> None:
    """Move every finished temporary file over its destination, then sync the directories."""
    for dest, tmp in pending.items():
        os.replace(tmp, dest)
    for directory in {dest.parent for dest in pending}:
        with suppress(OSError):
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def discard(pending: dict[Path, Path]) -> None:
    for tmp in pending.values():
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def write_files(outputs: dict[Path, Writer]) -> None:
    """Write several files all-or-nothing: none is replaced until all are fully written."""
    pending: dict[Path, Path] = {}
    try:
        for dest, write in outputs.items():
            pending[dest] = write_temp(dest, write)
    except BaseException:
        discard(pending)
        raise
    commit(pending)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    write_files({dest: lambda f: f.write(data)})


def json_bytes(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
