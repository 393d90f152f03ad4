"""SIGKILL at random moments of a training run, six times, some inside checkpoint
writes: every time the run directory stays usable, and resuming after the last kill ends
exactly where an uninterrupted run ends."""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ckpt

from yocto_fn import fileio
from yocto_fn.core.params import named_leaves
from yocto_fn.formats import checkpoint
from yocto_fn.run import metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY, KILLS = 64, 4, 6
FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
         "--batch-size", "4", "--eval-iters", "1", "--amp", "off", "--device", "cpu",
         "--eval-interval", str(EVERY), "--cosine-lr", "--warmup-iters", "8",
         "--ema-decay", "0.9"]  # fmt: skip


def start(data: Path, out: Path, delay: float) -> subprocess.Popen:
    """Train towards STEPS in total: afresh, or on from latest.pt when there is one."""
    done = checkpoint.load(out / "latest.pt")["iter"] if (out / "latest.pt").exists() else 0
    more = ["--resume", str(out / "latest.pt")] if done else []
    argv = ["train", "--data-dir", str(data), "--ckpt-dir", str(out), *FLAGS,
            "--max-iters", str(STEPS - done), *more]  # fmt: skip
    env = os.environ | {"YOCTO_FN_TEST_WRITE_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def wait_for(condition, proc: subprocess.Popen) -> bool:
    """Poll until `condition()` holds (True) or the run ends first (False)."""
    deadline = time.monotonic() + 120
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress in 120 s"
        time.sleep(0.002)
    return True


def in_a_write(out: Path) -> bool:
    """metrics.csv, latest.pt or best.pt is being written (run_meta.json does not count)."""
    return out.is_dir() and any(
        fileio.TEMP_NAME.fullmatch(p.name) and not p.name.startswith(".run_meta")
        for p in out.iterdir()
    )


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def check_usable(out: Path) -> int:
    """latest.pt and best.pt pass their checksum; metrics.csv has whole rows, one per
    evaluation up to at least the checkpoint's (rows past it are dropped on resume)."""
    saved = checkpoint.load(out / "latest.pt")["iter"] if (out / "latest.pt").exists() else 0
    if (out / "best.pt").exists():
        checkpoint.load(out / "best.pt")
    if (out / "metrics.csv").exists():
        with (out / "metrics.csv").open(newline="") as f:
            lines = list(csv.reader(f))
        assert lines[0] == list(metrics.COLUMNS)
        assert all(len(line) == len(metrics.COLUMNS) for line in lines[1:])
        iters = [int(line[0]) for line in lines[1:]]
        assert iters == list(range(EVERY, iters[-1] + 1, EVERY)) if iters else True
        assert (iters[-1] if iters else 0) in (saved, saved + EVERY)
    else:
        assert saved == 0
    return saved


@pytest.mark.slow  # about 25-45 s on 2 cores
def test_sigkill_six_times_then_resume_matches_an_uninterrupted_run(char_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "killed"
    proc = start(char_dir, ref, 0.0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    pick = random.Random(0)
    kills = inside = 0
    while kills < KILLS:
        before = mtime(out / "latest.pt")
        proc = start(char_dir, out, 0.05)
        try:
            if kills % 3 == 0:  # anywhere: start-up, a step, an evaluation or a write
                time.sleep(pick.uniform(0.5, 3.0))
                ready = proc.poll() is None
            elif kills % 3 == 1:  # inside the write of metrics.csv and the checkpoints
                ready = wait_for(lambda: in_a_write(out), proc)
                time.sleep(pick.uniform(0, 0.2))
            else:  # after a new checkpoint, somewhere in the steps that follow
                ready = wait_for(lambda t=before: mtime(out / "latest.pt") != t, proc)
                time.sleep(pick.uniform(0, 0.3))
            inside += ready and in_a_write(out)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            proc.kill()
        assert ready, f"the run ended before kill {kills + 1}: {proc.stderr.read().decode()}"
        kills += 1
        check_usable(out)

    proc = start(char_dir, out, 0.0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert inside >= 2, "too few kills landed inside a write"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert check_usable(out) == STEPS
    a, b = metrics.read(ref / "metrics.csv"), metrics.read(out / "metrics.csv")
    drop = {"time_sec", "throughput_tps"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == [
        {k: v for k, v in r.items() if k not in drop} for r in b
    ]
    final_ref, final = ckpt(ref / "latest.pt"), ckpt(out / "latest.pt")
    for key in ("params", "ema"):
        mine = named_leaves(final[key])
        for name, t in named_leaves(final_ref[key]).items():
            assert torch.equal(t, mine[name]), (key, name)
