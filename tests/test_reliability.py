"""Runs that survive: SIGTERM saves, a locked run directory, a full disk, damaged files."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import QUICK, TINY, ckpt, flip_a_tensor_byte, train_argv

from yocto_fn import cli, fileio
from yocto_fn.errors import UserError
from yocto_fn.formats import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_finishes_the_step_saves_and_prints_the_resume_command(char_dir, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(char_dir, out, "--max-iters", "100000", "--eval-interval", "2")
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        deadline = time.monotonic() + 60
        while not line.startswith("step") and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert line.startswith("step"), proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "interrupted (SIGTERM) at step" in rest and "--resume" in rest
    saved = int(rest.split("interrupted (SIGTERM) at step ")[1].split(";")[0])
    assert ckpt(out / "latest.pt")["iter"] == saved >= 2


def test_a_second_run_into_a_locked_directory_is_refused(char_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with fileio.exclusive(out, "training run"):
        assert cli.main(train_argv(char_dir, out, "--max-iters", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"in use by another training run (pid {os.getpid()})" in err
    assert not (out / "latest.pt").exists()
    assert cli.main(train_argv(char_dir, out, "--max-iters", "1")) == 0  # released


def test_a_killed_holder_leaves_no_stale_lock(char_dir, tmp_path):
    out = tmp_path / "run"
    hold = ("import sys, time; from pathlib import Path; from yocto_fn import fileio\n"
            f"with fileio.exclusive(Path(r'{out}'), 'x'):\n"
            "    print('locked', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {holder.pid}"), fileio.exclusive(out, "x"):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert cli.main(train_argv(char_dir, out, "--max-iters", "1")) == 0


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(
    char_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    assert cli.main(train_argv(char_dir, out, "--max-iters", "2", "--eval-interval", "2")) == 0
    before = (out / "latest.pt").read_bytes(), (out / "metrics.csv").read_bytes()
    capsys.readouterr()

    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    resume = ("--max-iters", "2", "--eval-interval", "2", "--resume", str(out / "latest.pt"))
    assert cli.main(train_argv(char_dir, out, *resume)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device while writing" in err
    assert "latest.pt" in err and "MB free" in err and "Traceback" not in err
    assert ((out / "latest.pt").read_bytes(), (out / "metrics.csv").read_bytes()) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_damaged_meta_json_is_one_line(char_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(char_dir, data)
    (data / "meta.json").write_text('{"mode": "char", "dtype":')
    assert cli.main(train_argv(data, tmp_path / "run", "--max-iters", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "meta.json is damaged" in err
    assert not (tmp_path / "run").exists()


def test_a_bit_flipped_checkpoint_is_refused_and_a_sibling_named(char_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_argv(char_dir, out, "--max-iters", "2", "--eval-interval", "1")) == 0
    assert checkpoint.load(out / "latest.pt")["iter"] == 2
    flip_a_tensor_byte(out / "latest.pt")
    torch.load(out / "latest.pt", weights_only=True)  # the zip itself still opens
    capsys.readouterr()
    assert cli.main(["sample", "--ckpt", str(out / "latest.pt"), "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latest.pt is damaged" in err and "use best.pt" in err


def _other_symbols(char_dir: Path, tmp_path: Path) -> Path:
    """The same data with two symbols of its vocabulary swapped: same size, other meaning."""
    data = tmp_path / "other"
    shutil.copytree(char_dir, data)
    chars = json.loads((data / "vocab.json").read_text())
    chars[0], chars[1] = chars[1], chars[0]
    (data / "vocab.json").write_text(json.dumps(chars))
    return data


def test_resume_or_init_from_across_tokenizers(char_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_argv(char_dir, out, "--max-iters", "1")) == 0
    other = _other_symbols(char_dir, tmp_path)
    capsys.readouterr()
    resume = train_argv(other, out, "--max-iters", "1", "--resume", str(out / "latest.pt"))
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained with another tokenizer" in err
    warm = train_argv(other, tmp_path / "warm", "--max-iters", "1",
                      "--init-from", str(out / "latest.pt"))  # fmt: skip
    assert cli.main(warm) == 2
    assert "--no-strict-init" in capsys.readouterr().err
    assert cli.main([*warm, "--no-strict-init"]) == 0
    assert "skipped: wte (other vocabulary)" in capsys.readouterr().err


def test_a_sweep_directory_is_locked_too(char_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data-dir", str(char_dir), "--out-dir", str(out), "--lrs", "1e-3",
            "--max-iters", "1", *TINY, *QUICK]  # fmt: skip
    with fileio.exclusive(out, "sweep"):
        assert cli.main(argv) == 2
    assert f"in use by another sweep (pid {os.getpid()})" in capsys.readouterr().err
    assert cli.main(argv) == 0
