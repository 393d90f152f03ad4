"""Atomic file writes: a crash or a bad input never leaves a half-written output behind.

Each file is written to a temporary name in its destination directory, flushed and fsynced,
and only then moved over the destination with `os.replace` (atomic on POSIX and Windows).
A process killed mid-write leaves only its temporary file, which the next holder of the
directory's lock removes.

`YOCTO_FN_TEST_WRITE_DELAY` (seconds, tests only) pauses after each temporary file is written,
so a kill test can land inside a checkpoint write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import orjson

from .errors import UserError

Writer = Callable[[BinaryIO], object]
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


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
        time.sleep(float(os.environ.get("YOCTO_FN_TEST_WRITE_DELAY", 0)))
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
    dest = None
    try:
        for dest, write in outputs.items():
            pending[dest] = write_temp(dest, write)
    except OSError as e:
        discard(pending)
        if e.errno != errno.ENOSPC or dest is None:
            raise
        raise UserError(disk_full_message(dest)) from None
    except BaseException:
        discard(pending)
        raise
    commit(pending)


def disk_full_message(dest: Path) -> str:
    """One line for ENOSPC: the file, the space left and, where an earlier version of the
    file exists, the space it needs (about that version's size)."""
    free = shutil.disk_usage(dest.parent).free / 2**20
    need = f"about {dest.stat().st_size / 2**20:.1f} MB" if dest.is_file() else "more"
    return (
        f"no space left on the device while writing {dest} ({free:.1f} MB free, it needs "
        f"{need}); the previous version is intact: free some space and run again"
    )


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    write_files({dest: lambda f: f.write(data)})


def json_bytes(obj: object) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


@contextmanager
def exclusive(directory: Path, what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on `directory` (a `.lock` file holding our pid).

    The OS drops the lock when the process ends, however it ends (SIGKILL included), so a
    crash never leaves a stale lock; a second holder is refused with the first one's pid.
    Readers (sampling from a run's checkpoints) take no lock.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"{directory} is in use by another {what} (pid {pid}); wait for it, stop it, "
                "or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temps(directory)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temps(directory: Path) -> None:
    """Delete the temporary files (`write_temp`'s names) a killed writer left in `directory`;
    only the lock holder calls this, so no live write is touched."""
    for path in directory.iterdir():
        if TEMP_NAME.fullmatch(path.name) and path.is_file():
            with suppress(FileNotFoundError):
                path.unlink()
