"""Data parallelism under torchrun (gloo, 2 CPU processes): the same rows and result as one
process with the global batch, with accumulation too, resume on one process, a failing
rank that ends the whole job quickly, and a signal to one rank that stops them all."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ckpt, tiny_config, train_argv
from conftest import metrics_rows as rows

from yocto_fn import cli
from yocto_fn.core.params import max_abs_diff
from yocto_fn.data import Dataset
from yocto_fn.run.distributed import World
from yocto_fn.run.runstate import RunState

ROOT = Path(__file__).resolve().parents[1]


def torchrun(
    script: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(script), *args]  # fmt: skip
    env = None if env is None else os.environ | env
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def train_args(data: Path, out: Path, *flags: str) -> list[str]:
    """conftest's tiny run at block 32, two batches per evaluation."""
    return train_argv(data, out, "--block-size", "32", "--eval-iters", "2", *flags)


# The AdamW cases are long tests: the all-reduce does not see the optimizer, and Muon with
# accumulation (the default optimizer, two micro-batches) is the case with the most to go wrong.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("accum", "optimizer"),
    [pytest.param(1, "adamw", marks=SLOW), pytest.param(2, "adamw", marks=SLOW), (2, "muon")],
)
def test_two_ranks_equal_one_process_with_the_global_batch(char_dir, tmp_path, accum, optimizer):
    flags = ("--max-iters", "3", "--eval-interval", "1", "--grad-accum-steps", str(accum),
             "--optimizer", optimizer)  # fmt: skip
    run = torchrun(ROOT / "cli.py", *train_args(char_dir, tmp_path / "dp", "--batch-size", "2",
                                                *flags))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert cli.main(train_args(char_dir, tmp_path / "one", "--batch-size", "4", *flags)) == 0
    dp, one = ckpt(tmp_path / "dp" / "latest.pt"), ckpt(tmp_path / "one" / "latest.pt")
    assert max_abs_diff(dp["params"], one["params"]) < 1e-5
    for a, b in zip(rows(tmp_path / "dp"), rows(tmp_path / "one"), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-5)
        assert a["tokens_seen"] == b["tokens_seen"]
    meta = json.loads((tmp_path / "dp" / "run_meta.json").read_text())
    assert meta["world_size"] == 2 and meta["global_batch"] == 4 * accum
    assert run.stdout.count("done: 3 steps") == 1  # rank 0 alone writes


def test_a_two_rank_checkpoint_resumes_on_one_process(char_dir, tmp_path):
    out = tmp_path / "dp"
    first = train_args(
        char_dir, out, "--batch-size", "2", "--max-iters", "2", "--eval-interval", "2"
    )
    run = torchrun(ROOT / "cli.py", *first)
    assert run.returncode == 0, run.stderr[-2000:]
    resume = ["--batch-size", "4", "--max-iters", "2", "--resume", str(out / "latest.pt")]
    assert cli.main(train_args(char_dir, out, *resume)) == 0
    assert ckpt(out / "latest.pt")["iter"] == 4
    assert int(rows(out)[-1]["tokens_seen"]) == 4 * 4 * 32


def test_a_failing_rank_ends_the_job_with_its_message(char_dir, tmp_path):
    t0 = time.perf_counter()
    run = torchrun(Path(__file__).with_name("dp_failing_rank.py"),
                   *train_args(char_dir, tmp_path / "dp", "--batch-size", "2", "--max-iters",
                               "20", "--eval-interval", "20"), timeout=90)  # fmt: skip
    assert run.returncode != 0
    assert "rank 1 gave up on purpose" in run.stderr
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "dp" / "latest.pt").exists()


@pytest.mark.parametrize("signalled", [1, pytest.param(0, marks=pytest.mark.slow)])  # 0: long
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(char_dir, tmp_path, signalled):
    """SIGTERM reaches one rank alone between steps 2 and 3: its flag rides step 3's
    all-reduce, so both ranks stop after step 3 (none waits in a fourth all-reduce), rank 0
    saves step 3, and resuming ends where an uninterrupted run ends."""
    flags = ("--eval-interval", "100")
    dp = train_args(char_dir, tmp_path / "dp", "--batch-size", "2", "--max-iters", "6", *flags)
    run = torchrun(Path(__file__).with_name("dp_signalled_rank.py"), *dp,
                   env={"YOCTO_FN_TEST_SIGNAL_RANK": str(signalled)})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    for rank in (0, 1):
        assert f"rank {rank} stopped (interrupted) at step 3" in run.stderr, run.stderr[-2000:]
    why = "SIGTERM" if signalled == 0 else "a signal to another rank"
    assert f"interrupted ({why}) at step 3; saved" in run.stdout
    latest = tmp_path / "dp" / "latest.pt"
    assert ckpt(latest)["iter"] == 3
    more = ("--batch-size", "4", "--max-iters", "3", "--resume", str(latest), *flags)
    assert cli.main(train_args(char_dir, tmp_path / "dp", *more)) == 0
    whole = ("--batch-size", "4", "--max-iters", "6", *flags)
    assert cli.main(train_args(char_dir, tmp_path / "one", *whole)) == 0
    resumed, one = ckpt(latest), ckpt(tmp_path / "one" / "latest.pt")
    assert resumed["iter"] == 6
    assert max_abs_diff(resumed["params"], one["params"]) < 1e-5


def test_each_rank_reads_only_its_rows_of_the_global_batch(char_dir):
    ds = Dataset(char_dir)
    x_all, y_all = ds.get_batch("train", 6, 16, torch.Generator().manual_seed(0))
    for rank in range(3):
        state = object.__new__(RunState)  # only what drawing a batch needs
        state.world, state.micro_batch = World(rank, 3, rank, True), 2
        state.ds, state.device, state.mcfg = ds, torch.device("cpu"), tiny_config(block_size=16)
        x, y = state._rows("train", torch.Generator().manual_seed(0))
        assert x.shape == (2, 16)
        assert torch.equal(x, x_all[2 * rank : 2 * rank + 2])
        assert torch.equal(y, y_all[2 * rank : 2 * rank + 2])


@pytest.mark.slow
def test_two_compiled_ranks_equal_one_eager_process(char_dir, tmp_path):
    """The all-reduce is a functional collective, so it stays inside the compiled step."""
    flags = ("--max-iters", "3", "--eval-interval", "3")
    dp = train_args(char_dir, tmp_path / "dp", "--batch-size", "2", "--compile", *flags)
    run = torchrun(ROOT / "cli.py", *dp, timeout=400)
    assert run.returncode == 0, run.stderr[-2000:]
    assert cli.main(train_args(char_dir, tmp_path / "one", "--batch-size", "4", *flags)) == 0
    dp_ckpt, one = ckpt(tmp_path / "dp" / "latest.pt"), ckpt(tmp_path / "one" / "latest.pt")
    assert max_abs_diff(dp_ckpt["params"], one["params"]) < 1e-5


def test_sweep_refuses_torchrun(char_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["sweep", "--data-dir", str(char_dir), "--out-dir", str(tmp_path / "s"), "--lrs", "1e-3"]
    assert cli.main(argv) == 2
    assert "without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
